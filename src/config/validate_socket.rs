//! A listener's `bind`: a TCP address, or `unix:PATH` with the socket file's
//! `socket_mode`, `socket_owner` and `socket_group`; and what a Unix socket
//! listener cannot be asked for (TLS, AUTH, PROXY headers either way,
//! XCLIENT, the original destination of a REDIRECT).

use std::path::PathBuf;

use super::types::{Bind, ClientTls, ListenerConfig, UnixBind, UpstreamTarget};
use super::validate::{Problems, socket_addr};

/// The prefix of a Unix socket listener's `bind`.
const UNIX_PREFIX: &str = "unix:";
/// Default `socket_mode`: every local user may connect, each counted as
/// itself by its peer credentials.
const DEFAULT_MODE: u32 = 0o666;

/// The keys that only a Unix socket listener takes.
pub(super) struct SocketFile {
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
}

/// `bind` and, for `unix:PATH`, the socket file's keys.
pub(super) fn bind(p: &mut Problems, label: &str, value: &str, file: SocketFile) -> Option<Bind> {
    let key = |field: &str| format!("{label}.{field}");
    let Some(path) = value.strip_prefix(UNIX_PREFIX) else {
        for (field, given) in [
            ("socket_mode", file.mode.is_some()),
            ("socket_owner", file.owner.is_some()),
            ("socket_group", file.group.is_some()),
        ] {
            if given {
                p.add(
                    key(field),
                    "only a Unix socket listener (bind = \"unix:PATH\") has a socket file; remove it",
                );
            }
        }
        return socket_addr(p, key("bind"), value).map(Bind::Tcp);
    };
    let path = PathBuf::from(path);
    let mut path_ok = path.is_absolute() && path.file_name().is_some();
    if !path_ok {
        p.add(
            key("bind"),
            format!(
                "\"{value}\" needs an absolute path to the socket file, e.g. \
                 \"unix:/run/mailbrake/submit.sock\""
            ),
        );
    } else if let Some(longest) = crate::listen::unix_path_room(&path) {
        p.add(
            key("bind"),
            format!(
                "\"{value}\" is too long for a Unix socket: the path and the temporary one \
                 beside it must fit in {longest} bytes; choose a shorter one"
            ),
        );
        path_ok = false;
    }
    let mode = match file.mode.as_deref() {
        None => Some(DEFAULT_MODE),
        Some(text) => match u32::from_str_radix(text, 8) {
            Ok(mode) if mode <= 0o777 => Some(mode),
            _ => {
                p.add(
                    key("socket_mode"),
                    format!("\"{text}\" is not a file mode; write octal digits, e.g. \"0660\""),
                );
                None
            }
        },
    };
    let owner = account(p, key("socket_owner"), file.owner, "user", |name| {
        nix::unistd::User::from_name(name).map(|u| u.is_some())
    });
    let group = account(p, key("socket_group"), file.group, "group", |name| {
        nix::unistd::Group::from_name(name).map(|g| g.is_some())
    });
    if !path_ok {
        return None;
    }
    Some(Bind::Unix(UnixBind {
        path,
        mode: mode?,
        owner: owner?,
        group: group?,
    }))
}

/// An owner or group that must exist on this system.
fn account(
    p: &mut Problems,
    key: String,
    name: Option<String>,
    what: &str,
    exists: impl Fn(&str) -> nix::Result<bool>,
) -> Option<Option<String>> {
    let Some(name) = name else {
        return Some(None);
    };
    match exists(&name) {
        Ok(true) => Some(Some(name)),
        Ok(false) => {
            p.add(key, format!("no {what} \"{name}\" on this system"));
            None
        }
        Err(e) => {
            p.add(key, format!("cannot look up {what} \"{name}\": {e}"));
            None
        }
    }
}

/// A Unix socket listener's other keys: no TLS (the socket never leaves the
/// host), no AUTH (the kernel's word is the identity: a login must not
/// change whose limit a script uses), no PROXY header either way and no
/// XCLIENT (the kernel names the client; it has no address to pass on), and
/// a fixed upstream (nothing was REDIRECTed). False when any is asked for.
pub(super) fn unix_fits(p: &mut Problems, label: &str, l: &ListenerConfig) -> bool {
    if !matches!(l.bind, Bind::Unix(_)) {
        return true;
    }
    let mut ok = true;
    let mut refuse = |field: &str, why: &str| {
        p.add(format!("{label}.{field}"), why.to_owned());
        ok = false;
    };
    if l.tls != ClientTls::None {
        refuse(
            "tls",
            "a Unix socket listener takes no TLS: its clients are on this host; remove it",
        );
    }
    if !l.proxy_protocol_trusted.is_empty() {
        refuse(
            "proxy_protocol_trusted",
            "a Unix socket's clients are named by the kernel, never by a PROXY header; remove it",
        );
    }
    if l.allow_plaintext_auth {
        refuse(
            "allow_plaintext_auth",
            "a Unix socket listener offers no AUTH: its clients are counted as their Unix \
             users, which a login must not change; remove it",
        );
    }
    if l.xclient {
        refuse(
            "xclient",
            "a Unix socket's clients have no address to pass on; remove it",
        );
    }
    if l.upstream_proxy_protocol.is_some() {
        refuse(
            "upstream_proxy_protocol",
            "a Unix socket's clients have no address to pass on; remove it",
        );
    }
    if l.upstream == UpstreamTarget::OriginalDestination {
        refuse(
            "upstream",
            "a Unix socket's connections were not REDIRECTed: give the MTA's \"HOST:PORT\"",
        );
    }
    ok
}
