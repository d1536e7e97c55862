//! TLS configurations tested with real in-memory handshakes.

use std::fs;
use std::process::Command;

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;

/// A throw-away CA in a temporary directory, issuing leaf certificates.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_file: PathBuf,
}

/// A leaf certificate written to disk, and its DER to compare with what a server presents.
struct Leaf {
    pair: CertPair,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "mailbrake test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_file = dir.path().join("ca.pem");
        fs::write(&ca_file, ca.pem()).unwrap();
        Pki { dir, ca, ca_file }
    }

    /// A leaf signed by this CA, with these SANs (and this CN when given);
    /// the file holds the leaf then the CA, the key is PKCS#8.
    fn leaf(&self, stem: &str, sans: &[&str], cn: Option<&str>) -> Leaf {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        if let Some(cn) = cn {
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let pair = self.write(stem, &(cert.pem() + &self.ca.pem()), &key.serialize_pem());
        Leaf {
            pair,
            der: cert.der().clone(),
        }
    }

    /// A self-signed certificate, issued by no CA.
    fn self_signed(&self, stem: &str, sans: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pair = self.write(stem, &cert.pem(), &key.serialize_pem());
        Leaf {
            pair,
            der: cert.der().clone(),
        }
    }

    fn write(&self, stem: &str, cert_pem: &str, key_pem: &str) -> CertPair {
        let pair = CertPair {
            cert: self.dir.path().join(format!("{stem}.pem")),
            key: self.dir.path().join(format!("{stem}.key")),
        };
        fs::write(&pair.cert, cert_pem).unwrap();
        fs::write(&pair.key, key_pem).unwrap();
        pair
    }
}

/// Runs one handshake over an in-memory pipe; returns the certificate the
/// server presented and the negotiated version, or the client's error.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    name: &str,
) -> io::Result<(CertificateDer<'static>, ProtocolVersion)> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server_task =
        tokio::spawn(async move { TlsAcceptor::from(server).accept(server_io).await.map(drop) });
    let result = TlsConnector::from(client)
        .connect(server_name(name).unwrap(), client_io)
        .await
        .map(|tls| {
            let (_, conn) = tls.get_ref();
            let presented = conn.peer_certificates().unwrap()[0].clone();
            (presented, conn.protocol_version().unwrap())
        });
    // The client's stream is dropped by now, so the server side ends too.
    let _ = server_task.await.unwrap();
    result
}

fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

#[tokio::test]
async fn sni_picks_the_certificate() {
    let pki = Pki::new();
    let leaves = [
        pki.leaf("default", &["default.example", "127.0.0.1"], None),
        pki.leaf("mail", &["mail.example", "smtp.example"], None),
        pki.leaf("wild", &["*.wild.example"], None),
        pki.leaf("cn", &[], Some("cn.example")),
    ];
    let pairs: Vec<CertPair> = leaves.iter().map(|l| l.pair.clone()).collect();
    let server = server_config(&pairs).unwrap();
    let trusting = client_config(true, Some(&pki.ca_file)).unwrap();
    let blind = client_config(false, None).unwrap();

    // (name the client connects to, verify the server's certificate, index of the expected certificate)
    let cases = [
        ("default.example", true, 0),
        ("mail.example", true, 1),
        ("smtp.example", true, 1),
        ("a.wild.example", true, 2),
        // An IP server name sends no SNI: the default certificate.
        ("127.0.0.1", true, 0),
        // webpki ignores the CN, so this one is checked without verification.
        ("cn.example", false, 3),
        ("MAIL.Example", false, 1),
        ("unknown.example", false, 0),
        ("wild.example", false, 0),
        ("a.b.wild.example", false, 0),
    ];
    for (name, verify, expected) in cases {
        let client = if verify { &trusting } else { &blind };
        let (presented, _) = handshake(server.clone(), client.clone(), name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            presented == leaves[expected].der,
            "{name}: expected certificate {expected}"
        );
    }
}

#[tokio::test]
async fn negotiates_tls13_and_tls12() {
    let pki = Pki::new();
    let leaf = pki.leaf("mail", &["mail.example"], None);
    let server = server_config(&[leaf.pair]).unwrap();
    let provider = provider();
    let tls12_only = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerification { provider }))
        .with_no_client_auth();
    let cases = [
        (client_config(false, None).unwrap(), "TLSv1.3"),
        (Arc::new(tls12_only), "TLSv1.2"),
    ];
    for (client, expected) in cases {
        let (_, version) = handshake(server.clone(), client, "mail.example")
            .await
            .unwrap();
        assert_eq!(version_name(version), expected);
    }
}

/// A TLS 1.1 ClientHello (no supported_versions extension) is refused with
/// a protocol_version alert: only 1.2 and 1.3 are offered.
#[test]
fn tls11_client_hello_is_refused() {
    let pki = Pki::new();
    let leaf = pki.leaf("mail", &["mail.example"], None);
    let server = server_config(&[leaf.pair]).unwrap();

    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend([0x11; 32]); // random
    body.push(0); // no session id
    body.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    body.extend([0x01, 0x00]); // null compression
    // Extensions: only signature_algorithms (ecdsa_secp256r1_sha256), which
    // rustls checks first; no supported_versions, so this offers 1.1 alone.
    body.extend([0x00, 0x08, 0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]);
    let mut handshake = vec![0x01, 0, 0, body.len() as u8];
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01, 0, handshake.len() as u8];
    record.extend(handshake);

    let mut conn = rustls::ServerConnection::new(server).unwrap();
    conn.read_tls(&mut record.as_slice()).unwrap();
    let err = conn.process_new_packets().unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered)
        ),
        "unexpected error {err:?}"
    );
    let mut alert = Vec::new();
    conn.write_tls(&mut alert).unwrap();
    // Alert record: type 21, then level 2 (fatal), description 70 (protocol_version).
    assert_eq!(alert[0], 21);
    assert_eq!(&alert[alert.len() - 2..], &[2, 70]);
}

#[tokio::test]
async fn upstream_verification() {
    let pki = Pki::new();
    let other = Pki::new();
    let signed = server_config(&[pki.leaf("up", &["upstream.example"], None).pair]).unwrap();
    let self_signed =
        server_config(&[pki.self_signed("self", &["upstream.example"]).pair]).unwrap();

    // (server, verify, CA file, name, accepted)
    let cases = [
        (&self_signed, false, None, "upstream.example", true),
        (&self_signed, false, None, "any.other.name", true),
        (&signed, true, Some(&pki.ca_file), "upstream.example", true),
        (&signed, true, Some(&pki.ca_file), "wrong.example", false),
        (
            &signed,
            true,
            Some(&other.ca_file),
            "upstream.example",
            false,
        ),
        (
            &self_signed,
            true,
            Some(&pki.ca_file),
            "upstream.example",
            false,
        ),
    ];
    for (server, verify, ca, name, accepted) in cases {
        let client = client_config(verify, ca.map(PathBuf::as_path)).unwrap();
        let result = handshake(server.clone(), client, name).await;
        match (accepted, result) {
            (true, Ok(_)) => {}
            (false, Err(e)) => assert!(
                matches!(rustls_error(&e), Some(rustls::Error::InvalidCertificate(_))),
                "{name} verify={verify}: unexpected error {e}"
            ),
            (true, Err(e)) => panic!("{name} verify={verify}: rejected: {e}"),
            (false, Ok(_)) => panic!("{name} verify={verify}: accepted"),
        }
    }
}

#[test]
fn bad_files_are_named_in_the_error() {
    let pki = Pki::new();
    let good = pki.leaf("good", &["good.example"], None);
    let other = pki.leaf("other", &["other.example"], None);
    let junk = pki.dir.path().join("junk.key");
    fs::write(&junk, "this is not a key\n").unwrap();
    let broken = pki.dir.path().join("broken.key");
    fs::write(
        &broken,
        "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let garbage_key = pki.dir.path().join("garbage.key");
    let der = base64::engine::general_purpose::STANDARD.encode([0x30, 0x03, 0x02, 0x01, 0x00]);
    fs::write(
        &garbage_key,
        format!("-----BEGIN PRIVATE KEY-----\n{der}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let missing = pki.dir.path().join("missing.key");
    let no_names = pki.leaf("nonames", &[], Some("Example Ltd"));

    let with_key = |key: &Path| CertPair {
        cert: good.pair.cert.clone(),
        key: key.to_owned(),
    };
    // (pairs, file the message must name, words it must contain)
    let cases: Vec<(Vec<CertPair>, &Path, &str)> = vec![
        (vec![with_key(&junk)], &junk, "no PEM private key"),
        (
            vec![with_key(&broken)],
            &broken,
            "not a valid PEM private key",
        ),
        (
            vec![with_key(&garbage_key)],
            &garbage_key,
            "unsupported or invalid",
        ),
        (vec![with_key(&missing)], &missing, "cannot read"),
        (
            vec![with_key(&other.pair.key)],
            &other.pair.key,
            "does not match",
        ),
        (
            vec![with_key(&good.pair.cert)],
            &good.pair.cert,
            "no PEM private key",
        ),
        (
            vec![CertPair {
                cert: junk.clone(),
                key: good.pair.key.clone(),
            }],
            &junk,
            "no PEM certificate",
        ),
        (
            vec![good.pair.clone(), no_names.pair.clone()],
            &no_names.pair.cert,
            "no DNS names",
        ),
    ];
    for (pairs, file, words) in cases {
        let message = server_config(&pairs).unwrap_err().to_string();
        assert!(
            message.contains(&file.display().to_string()) && message.contains(words),
            "{message:?} should name {} and say {words:?}",
            file.display()
        );
        assert!(!message.contains("BEGIN"), "{message:?} quotes the file");
    }
    assert!(matches!(server_config(&[]), Err(TlsError::NoCertificates)));
    // The default certificate may lack DNS names: it is served whatever the SNI.
    server_config(&[no_names.pair]).unwrap();

    let err = client_config(true, Some(&junk)).unwrap_err();
    assert!(matches!(err, TlsError::NoCaInFile { .. }), "{err}");
}

/// Re-wraps an EC PKCS#8 key as SEC1 (`EC PRIVATE KEY`): the SEC1 structure
/// is the OCTET STRING inside PKCS#8's PrivateKeyInfo.
fn pkcs8_to_sec1_pem(pkcs8: &[u8]) -> String {
    /// Splits one DER TLV off the front: (tag, contents, rest).
    fn tlv(der: &[u8]) -> (u8, &[u8], &[u8]) {
        let (tag, first) = (der[0], der[1] as usize);
        let (len, start) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            let len = der[2..2 + n]
                .iter()
                .fold(0, |acc, &b| (acc << 8) | b as usize);
            (len, 2 + n)
        };
        (tag, &der[start..start + len], &der[start + len..])
    }
    let (_, info, _) = tlv(pkcs8); // PrivateKeyInfo SEQUENCE
    let (_, _, rest) = tlv(info); // version
    let (_, _, rest) = tlv(rest); // AlgorithmIdentifier
    let (tag, sec1, _) = tlv(rest); // privateKey OCTET STRING
    assert_eq!(tag, 0x04);
    let b64 = base64::engine::general_purpose::STANDARD.encode(sec1);
    format!("-----BEGIN EC PRIVATE KEY-----\n{b64}\n-----END EC PRIVATE KEY-----\n")
}

#[tokio::test]
async fn key_formats() {
    let pki = Pki::new();
    let pkcs8 = pki.leaf("pkcs8", &["pkcs8.example"], None);
    let sec1 = pki.leaf("sec1", &["sec1.example"], None);
    let pkcs8_der = PrivateKeyDer::from_pem_slice(&fs::read(&sec1.pair.key).unwrap()).unwrap();
    fs::write(&sec1.pair.key, pkcs8_to_sec1_pem(pkcs8_der.secret_der())).unwrap();
    assert!(matches!(
        read_key(&sec1.pair.key).unwrap(),
        PrivateKeyDer::Sec1(_)
    ));

    let mut leaves = vec![("pkcs8.example", pkcs8), ("sec1.example", sec1)];
    match openssl_rsa_pkcs1(&pki) {
        Some(rsa) => {
            assert!(matches!(
                read_key(&rsa.pair.key).unwrap(),
                PrivateKeyDer::Pkcs1(_)
            ));
            leaves.push(("rsa.example", rsa));
        }
        None => eprintln!("openssl not found: PKCS#1 case skipped"),
    }
    let pairs: Vec<CertPair> = leaves.iter().map(|(_, l)| l.pair.clone()).collect();
    let server = server_config(&pairs).unwrap();
    let client = client_config(false, None).unwrap();
    for (name, leaf) in &leaves {
        let (presented, _) = handshake(server.clone(), client.clone(), name)
            .await
            .unwrap();
        assert!(presented == leaf.der, "{name}");
    }
}

/// An RSA certificate with a PKCS#1 (`RSA PRIVATE KEY`) key, made by the
/// openssl CLI (ring cannot generate RSA keys); None when openssl is absent.
fn openssl_rsa_pkcs1(pki: &Pki) -> Option<Leaf> {
    let pair = CertPair {
        cert: pki.dir.path().join("rsa.pem"),
        key: pki.dir.path().join("rsa.key"),
    };
    let run = |args: &[&str]| match Command::new("openssl").args(args).output() {
        Ok(out) => {
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
            Some(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => panic!("openssl: {e}"),
    };
    let key = pair.key.to_str().unwrap();
    let cert = pair.cert.to_str().unwrap();
    run(&["genrsa", "-traditional", "-out", key, "2048"])?;
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        key,
        "-out",
        cert,
        "-days",
        "2",
        "-subj",
        "/CN=rsa.example",
        "-addext",
        "subjectAltName=DNS:rsa.example",
    ])?;
    let der = read_certs(&pair.cert).unwrap().remove(0);
    Some(Leaf { pair, der })
}

#[test]
fn server_names() {
    let cases: [(&str, Option<&str>); 8] = [
        ("mail.example.com", Some("DnsName(\"mail.example.com\")")),
        ("192.0.2.1", Some("IpAddress(V4(Ipv4Addr([192, 0, 2, 1])))")),
        ("2001:db8::1", Some("IpAddress(V6")),
        ("[2001:db8::1]", Some("IpAddress(V6")),
        ("localhost", Some("DnsName(\"localhost\")")),
        ("bad name!", None),
        ("[mail.example.com]", None),
        ("", None),
    ];
    for (host, expected) in cases {
        match (server_name(host), expected) {
            (Ok(name), Some(prefix)) => {
                let debug = format!("{name:?}");
                assert!(debug.starts_with(prefix), "{host}: {debug}");
            }
            (Err(e), None) => assert!(e.to_string().contains(&format!("{host:?}"))),
            (got, _) => panic!("{host}: unexpected {got:?}"),
        }
    }
}

#[test]
fn version_names() {
    let cases = [
        (ProtocolVersion::TLSv1_3, "TLSv1.3"),
        (ProtocolVersion::TLSv1_2, "TLSv1.2"),
        (ProtocolVersion::TLSv1_1, "TLSv1.1"),
        (ProtocolVersion::Unknown(0x7f00), "unknown"),
    ];
    for (version, expected) in cases {
        assert_eq!(version_name(version), expected);
    }
}

#[test]
fn host_name_like_common_names() {
    let cases = [
        ("mail.example.com", true),
        ("*.example.com", true),
        ("localhost", true),
        ("Example Ltd", false),
        ("", false),
        ("a..b", false),
        ("*.", false),
    ];
    for (cn, expected) in cases {
        assert_eq!(looks_like_host_name(cn), expected, "{cn:?}");
    }
}
