//! Where each mechanism names its user, read from the decoded client message
//! that carries it: the first one (the initial response or the first
//! continuation), or for CRAM-MD5 and DIGEST-MD5 the answer to the server's
//! challenge.
//!
//! Each reader follows its RFC's syntax and, where servers are known to
//! read more loosely, refuses what they would read differently, so the name
//! returned is the one the server authenticates (Dovecot 2.3 is the
//! reference where the RFC leaves room). An authorization identity other
//! than the username is refused: servers either ignore it (aiosmtpd) or log
//! in as it (Dovecot master users, Cyrus proxy authorization), so the name
//! the MTA ends up with depends on the server.

use super::{Mechanism, Unreadable, Username};

/// The username in `message`, the decoded client message that names it.
///
/// A NUL is a separator in PLAIN only (exactly two of them); anywhere else
/// servers written in C stop reading at it while mailbrake would read on
/// ("username=\"alice\",x=\0,realm=\"r1\"" is alice to Dovecot), so a message
/// with one is unreadable.
pub(super) fn username(mechanism: Mechanism, message: &[u8]) -> Result<Username, Unreadable> {
    let nuls = message.iter().filter(|&&b| b == 0).count();
    let allowed = if mechanism == Mechanism::Plain { 2 } else { 0 };
    if nuls > allowed {
        return Err(Unreadable::Syntax);
    }
    match mechanism {
        Mechanism::Plain => plain(message),
        Mechanism::Login => user(message),
        Mechanism::CramMd5 => cram_md5(message),
        Mechanism::DigestMd5 => digest_md5(message),
        Mechanism::Scram => scram(message),
        Mechanism::XOauth2 => xoauth2(message),
        Mechanism::OAuthBearer => oauthbearer(message),
        Mechanism::Other => Err(Unreadable::Mechanism),
    }
}

fn user(raw: &[u8]) -> Result<Username, Unreadable> {
    Username::new(raw).ok_or(Unreadable::Username)
}

/// An authorization identity is accepted only empty or equal to one of the
/// names the user is known by.
fn same_identity(authzid: &[u8], names: &[&[u8]]) -> Result<(), Unreadable> {
    if authzid.is_empty() || names.contains(&authzid) {
        Ok(())
    } else {
        Err(Unreadable::Authzid)
    }
}

/// PLAIN (RFC 4616 §2): `[authzid] NUL authcid NUL passwd`.
fn plain(d: &[u8]) -> Result<Username, Unreadable> {
    let mut parts = d.splitn(3, |&b| b == 0);
    let authzid = parts.next().unwrap_or_default();
    let (Some(authcid), Some(_password)) = (parts.next(), parts.next()) else {
        return Err(Unreadable::Syntax);
    };
    let u = user(authcid)?;
    same_identity(authzid, &[authcid])?;
    Ok(u)
}

/// CRAM-MD5 (RFC 2195 §2): `username SP digest`; the digest has no space,
/// the username may (split at the last space, as Dovecot does).
fn cram_md5(d: &[u8]) -> Result<Username, Unreadable> {
    let sp = d
        .iter()
        .rposition(|&b| b == b' ')
        .ok_or(Unreadable::Syntax)?;
    user(&d[..sp])
}

/// DIGEST-MD5 (RFC 2831 §2.1.2): the digest-response's `username`, each of
/// `username`, `realm` and `authzid` at most once. With a realm, a username
/// without `@` becomes `username@realm`, as Dovecot authenticates it.
fn digest_md5(d: &[u8]) -> Result<Username, Unreadable> {
    let (mut username, mut realm, mut authzid) = (None, None, None);
    for (key, value) in directives(d)? {
        let slot = match key.to_ascii_lowercase().as_slice() {
            b"username" => &mut username,
            b"realm" => &mut realm,
            b"authzid" => &mut authzid,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(Unreadable::Syntax);
        }
    }
    let name: Vec<u8> = username.ok_or(Unreadable::NoUser)?;
    let identity = match realm {
        Some(r) if !r.is_empty() && !name.contains(&b'@') => [&name[..], b"@", &r].concat(),
        _ => name.clone(),
    };
    let u = user(&identity)?;
    same_identity(&authzid.unwrap_or_default(), &[&name, &identity])?;
    Ok(u)
}

/// A directive's name and value.
type Directive = (Vec<u8>, Vec<u8>);

/// `key=value` directives separated by commas (empty elements allowed),
/// each value a token or a quoted-string with `\` escapes, linear white
/// space around each part (RFC 2831 §7.1).
fn directives(d: &[u8]) -> Result<Vec<Directive>, Unreadable> {
    let lws = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    // Skips white space, and commas too when `commas`.
    let skip = |i: &mut usize, commas: bool| {
        while *i < d.len() && (lws(d[*i]) || (commas && d[*i] == b',')) {
            *i += 1;
        }
    };
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        skip(&mut i, true);
        if i == d.len() {
            return Ok(out);
        }
        let start = i;
        while i < d.len() && !lws(d[i]) && d[i] != b'=' && d[i] != b',' {
            i += 1;
        }
        let key = d[start..i].to_vec();
        skip(&mut i, false);
        if key.is_empty() || d.get(i) != Some(&b'=') {
            return Err(Unreadable::Syntax);
        }
        i += 1;
        skip(&mut i, false);
        let mut value = Vec::new();
        if d.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match d.get(i) {
                    None => return Err(Unreadable::Syntax),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        value.push(*d.get(i + 1).ok_or(Unreadable::Syntax)?);
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < d.len() && !lws(d[i]) && d[i] != b',' {
                value.push(d[i]);
                i += 1;
            }
        }
        skip(&mut i, false);
        if i < d.len() && d[i] != b',' {
            return Err(Unreadable::Syntax);
        }
        out.push((key, value));
    }
}

/// A gs2-cbind-flag without channel binding (RFC 5801 §4): `n` or `y`.
/// `p=…` asks for channel binding, which the non-PLUS mechanisms refuse.
fn no_channel_binding(flag: Option<&[u8]>) -> Result<(), Unreadable> {
    match flag {
        Some(b"n" | b"y") => Ok(()),
        _ => Err(Unreadable::Syntax),
    }
}

/// A saslname (RFC 5802 §7, RFC 5801 §4): `=2C` is `,`, `=3D` is `=`, and
/// any other `=` or `,` is invalid.
fn saslname(raw: &[u8]) -> Result<Vec<u8>, Unreadable> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'=' => {
                let c = match rest.get(..2) {
                    Some(b"2C") => b',',
                    Some(b"3D") => b'=',
                    _ => return Err(Unreadable::Syntax),
                };
                out.push(c);
                rest = &rest[2..];
            }
            b',' => return Err(Unreadable::Syntax),
            _ => out.push(b),
        }
    }
    Ok(out)
}

/// SCRAM client-first-message (RFC 5802 §7):
/// `gs2-cbind-flag "," [a=authzid] "," n=username "," r=nonce …`.
/// A reserved `m=` extension before the username is refused, as servers do.
fn scram(d: &[u8]) -> Result<Username, Unreadable> {
    let mut fields = d.split(|&b| b == b',');
    no_channel_binding(fields.next())?;
    let authzid = match fields.next().ok_or(Unreadable::Syntax)? {
        b"" => Vec::new(),
        a => saslname(a.strip_prefix(b"a=").ok_or(Unreadable::Syntax)?)?,
    };
    let name = fields
        .next()
        .and_then(|f| f.strip_prefix(b"n="))
        .ok_or(Unreadable::Syntax)?;
    let name = saslname(name)?;
    let u = user(&name)?;
    same_identity(&authzid, &[&name])?;
    Ok(u)
}

/// XOAUTH2: `user=NAME ^A auth=Bearer TOKEN ^A ^A`. Dovecot takes the last
/// `user=` field wherever it is, the format means the first: exactly one is
/// required.
fn xoauth2(d: &[u8]) -> Result<Username, Unreadable> {
    let mut names = d
        .split(|&b| b == 0x01)
        .filter_map(|f| f.strip_prefix(b"user="));
    let name = names.next().ok_or(Unreadable::NoUser)?;
    if names.next().is_some() {
        return Err(Unreadable::Syntax);
    }
    user(name)
}

/// OAUTHBEARER (RFC 7628 §3.1): `gs2-header ^A kvpairs ^A`, the user being
/// the gs2-header's `a=` (Dovecot needs it). Without one the user is only in
/// the token, which mailbrake cannot read: [`Unreadable::NoUser`].
fn oauthbearer(d: &[u8]) -> Result<Username, Unreadable> {
    let kvsep = d
        .iter()
        .position(|&b| b == 0x01)
        .ok_or(Unreadable::Syntax)?;
    let mut header = d[..kvsep].split(|&b| b == b',');
    no_channel_binding(header.next())?;
    let authzid = header.next().unwrap_or_default();
    if header.any(|f| !f.is_empty()) {
        return Err(Unreadable::Syntax);
    }
    if authzid.is_empty() {
        return Err(Unreadable::NoUser);
    }
    let name = authzid.strip_prefix(b"a=").ok_or(Unreadable::Syntax)?;
    user(&saslname(name)?)
}
