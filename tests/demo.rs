//! The README's first command works: `config/demo.sh` relays a message
//! through mailbrake to Postfix's smtp-sink over plain, STARTTLS and
//! implicit TLS, with swaks as the client, then shows the limit refusing the
//! recipients over 12/1h and the operator's view of the sender.

use std::process::Command;

#[test]
fn readme_demo_relays_over_plain_starttls_and_implicit_tls_and_shows_the_limit() {
    for tool in ["smtp-sink", "swaks", "openssl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            found,
            "DEMO TEST CANNOT RUN: `{tool}` is missing (.ci/run installs postfix, swaks, openssl)"
        );
    }
    let out = Command::new("bash")
        .args(["config/demo.sh", "--once"])
        .env("MAILBRAKE_BIN", env!("CARGO_BIN_EXE_mailbrake"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{text}");
    for mode in ["plain", "starttls", "implicit"] {
        assert!(
            text.contains(&format!("demo: {mode}: relayed")),
            "{mode}:\n{text}"
        );
        assert!(
            text.contains(&format!("Subject: mailbrake demo ({mode})")),
            "smtp-sink did not store the {mode} message:\n{text}"
        );
    }
    // The demo's client runs as this test's user: its sender key.
    let me = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .expect("the test's user has a name")
        .name;
    for shown in [
        "demo: limit: 9 recipients accepted, 3 refused",
        &format!("450 4.7.1 Recipient limit reached for user:{me} (12/1h)"),
        "counts     12/12 in the last 1h",
        "Subject: mailbrake demo (limit)",
    ] {
        assert!(
            text.contains(shown),
            "the demo did not show {shown:?}:\n{text}"
        );
    }
}
