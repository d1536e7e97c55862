//! `[[vhost]]`: raw tables → validated vhosts, each name, uid and network
//! belonging to one vhost only. `users` are resolved to uids here, through
//! the system's user database (`getpwnam`), when the file is loaded; the
//! table is matched against connections in [`crate::identity::vhosts`].

use std::collections::HashMap;

use ipnet::IpNet;
use nix::unistd::User;

use super::raw::RawVhost;
use super::types::VhostConfig;
use super::validate::{Problems, check, network};
use super::validate_limits::NAME_FORM;

/// Every `[[vhost]]`. Names are unique, and a uid or a network belongs to one
/// vhost only: otherwise a connection's vhost would be ambiguous.
pub(super) fn vhost_tables(p: &mut Problems, raw: Vec<RawVhost>) -> Option<Vec<VhostConfig>> {
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut uid_owner: HashMap<u32, String> = HashMap::new();
    let mut net_owner: HashMap<IpNet, String> = HashMap::new();
    let mut out = Some(Vec::with_capacity(raw.len()));
    for (i, raw) in raw.into_iter().enumerate() {
        let (label, name) = vhost_name(p, i, raw.name.as_deref());
        let mut ok = name.is_some();
        if let Some(name) = &name {
            if let Some(first) = names.get(name) {
                p.add(
                    format!("{label}.name"),
                    format!(
                        "\"{name}\" is already the name of vhost #{first}; names must be unique"
                    ),
                );
                ok = false;
            } else {
                names.insert(name.clone(), i + 1);
            }
        }
        if raw.networks.is_empty() && raw.uids.is_empty() && raw.users.is_empty() {
            p.add(
                &label,
                "needs at least one of networks, uids and users to recognise its connections",
            );
        }

        let mut networks = Vec::with_capacity(raw.networks.len());
        for (j, text) in raw.networks.iter().enumerate() {
            let key = format!("{label}.networks[{j}]");
            let Some(net) = check(p, &key, network(text)) else {
                ok = false;
                continue;
            };
            match net_owner.get(&net) {
                Some(owner) if *owner != label => {
                    p.add(key, format!("{net} is already a network of {owner}"));
                    ok = false;
                }
                Some(_) => {} // Listed twice in this vhost: harmless.
                None => {
                    net_owner.insert(net, label.clone());
                    networks.push(net);
                }
            }
        }

        let explicit = raw.uids.iter().enumerate().map(|(j, &n)| {
            let uid = u32::try_from(n)
                .map_err(|_| format!("{n} is not a uid; give a number from 0 to {}", u32::MAX));
            (format!("{label}.uids[{j}]"), uid)
        });
        let resolved = raw
            .users
            .iter()
            .enumerate()
            .map(|(j, user)| (format!("{label}.users[{j}]"), user_uid(user)));
        let mut uids = Vec::with_capacity(raw.uids.len() + raw.users.len());
        for (key, uid) in explicit.chain(resolved).collect::<Vec<_>>() {
            let Some(uid) = check(p, &key, uid) else {
                ok = false;
                continue;
            };
            match uid_owner.get(&uid) {
                Some(owner) if *owner != label => {
                    p.add(key, format!("uid {uid} already belongs to {owner}"));
                    ok = false;
                }
                // Both as a uid and as a user name in this vhost: harmless.
                Some(_) => {}
                None => {
                    uid_owner.insert(uid, label.clone());
                    uids.push(uid);
                }
            }
        }

        match (&mut out, name) {
            (Some(out), Some(name)) if ok => out.push(VhostConfig {
                name,
                networks,
                uids,
            }),
            _ => out = None,
        }
    }
    out
}

/// The label used in messages (`vhost[NAME]`, or `vhost[#N]` when the name is
/// missing or unusable) and the name when it is usable.
fn vhost_name(p: &mut Problems, i: usize, name: Option<&str>) -> (String, Option<String>) {
    let fallback = format!("vhost[#{}]", i + 1);
    let problem = match name {
        None => format!("required; {NAME_FORM}"),
        Some("") => format!("must not be empty; {NAME_FORM}"),
        Some(name)
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
        {
            format!("\"{name}\" is not allowed; {NAME_FORM}")
        }
        Some(name) => return (format!("vhost[{name}]"), Some(name.to_owned())),
    };
    p.add(format!("{fallback}.name"), problem);
    (fallback, None)
}

/// The uid of a Unix user, from the system's user database.
fn user_uid(name: &str) -> Result<u32, String> {
    if name.is_empty() {
        return Err("must not be empty; give a Unix user name".to_owned());
    }
    match User::from_name(name) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(format!(
            "no user \"{name}\" on this system; create it, or give its uid in uids"
        )),
        Err(e) => Err(format!("cannot look up user \"{name}\": {e}")),
    }
}
