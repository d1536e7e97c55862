//! rustls configurations for both legs: the client-facing server config with
//! certificates chosen by SNI, and the upstream client config (a CA file, the
//! system roots, or no verification at all).
//!
//! Every config is built with the `ring` provider passed explicitly, so no
//! process-wide default provider is needed. TLS 1.2 and 1.3 only.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, InconsistentKeys, ProtocolVersion, RootCertStore, SignatureScheme,
};
use x509_parser::extensions::GeneralName;

use crate::config::CertPair;

/// The protocol versions offered on both legs, most preferred first.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Why a TLS configuration could not be built. Messages name the file and the
/// problem, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate configured for a TLS listener")]
    NoCertificates,
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: not a valid PEM certificate file", path.display())]
    CertPem { path: PathBuf },
    #[error("{}: no PEM certificate found", path.display())]
    NoCertInFile { path: PathBuf },
    #[error("{}: cannot parse the certificate: {reason}", path.display())]
    CertParse { path: PathBuf, reason: String },
    #[error(
        "{}: certificate has no DNS names (SAN dNSName or CN), so SNI can never select it; \
         only the first certificate may lack them",
        path.display()
    )]
    NoDnsNames { path: PathBuf },
    #[error("{}: no PEM private key found (expected PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKeyInFile { path: PathBuf },
    #[error("{}: not a valid PEM private key file", path.display())]
    KeyPem { path: PathBuf },
    #[error("{}: unsupported or invalid private key", path.display())]
    KeyUnusable { path: PathBuf },
    #[error("the private key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: no usable CA certificate found", path.display())]
    NoCaInFile { path: PathBuf },
    #[error("no system root certificates could be loaded{detail}")]
    NoSystemRoots { detail: String },
    #[error("{name:?} is neither a valid DNS name nor an IP address")]
    InvalidServerName { name: String },
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Server config for the client leg: TLS 1.2 and 1.3 only; the first pair is
/// the default certificate, the others are selected by SNI using the DNS names
/// (SAN dNSName, or CN when the certificate has no dNSName SAN) found in each
/// certificate; a wildcard `*.example.com` matches exactly one label. When two
/// certificates claim the same name, the earlier one wins. No client auth, no ALPN.
pub fn server_config(pairs: &[CertPair]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let resolver = SniResolver::load(pairs, &provider)?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    Ok(Arc::new(config))
}

/// Client config for the upstream leg: TLS 1.2+. With `verify`, the roots are
/// the certificates in `ca` when given, else the system roots (an error if none
/// load). Without `verify`, any certificate is accepted (`NoVerification`) and
/// `ca` is ignored.
pub fn client_config(
    verify: bool,
    ca: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)?;
    let config = if verify {
        let roots = match ca {
            Some(path) => ca_roots(path)?,
            None => system_roots()?,
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification { provider }))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// The name to present as SNI and to verify: the caller passes the explicit
/// `upstream_tls_name` when configured, else the upstream host. An IP literal
/// (optionally in brackets) becomes an IP `ServerName`, which sends no SNI.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .filter(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
        .unwrap_or(host);
    ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::InvalidServerName {
        name: host.to_owned(),
    })
}

/// Human-readable protocol version for logs: "TLSv1.3", "TLSv1.2".
pub fn version_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::TLSv1_3 => "TLSv1.3",
        ProtocolVersion::TLSv1_2 => "TLSv1.2",
        ProtocolVersion::TLSv1_1 => "TLSv1.1",
        ProtocolVersion::TLSv1_0 => "TLSv1.0",
        ProtocolVersion::SSLv3 => "SSLv3",
        ProtocolVersion::SSLv2 => "SSLv2",
        _ => "unknown",
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

// === impl SniResolver ===

/// Chooses the certificate for a ClientHello: an exact name, then a wildcard
/// for the parent domain, then the default (the first pair).
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    /// Lower-case DNS name → certificate.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Lower-case parent domain of a `*.` wildcard → certificate.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl SniResolver {
    fn load(pairs: &[CertPair], provider: &CryptoProvider) -> Result<Self, TlsError> {
        let mut default = None;
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, pair) in pairs.iter().enumerate() {
            let key = Arc::new(load_pair(pair, provider)?);
            let names = dns_names(&key.cert[0], &pair.cert)?;
            if names.is_empty() && i > 0 {
                return Err(TlsError::NoDnsNames {
                    path: pair.cert.clone(),
                });
            }
            for name in names {
                let (table, name) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent.to_owned()),
                    None => (&mut exact, name),
                };
                table.entry(name).or_insert_with(|| key.clone());
            }
            default.get_or_insert(key);
        }
        let default = default.ok_or(TlsError::NoCertificates)?;
        Ok(SniResolver {
            default,
            exact,
            wildcard,
        })
    }

    fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else {
            return &self.default;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return key;
        }
        if let Some((label, parent)) = name.split_once('.')
            && !label.is_empty()
            && let Some(key) = self.wildcard.get(parent)
        {
            return key;
        }
        &self.default
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(client_hello.server_name()).clone())
    }
}

/// Reads a certificate chain and its key, and checks that they belong together.
fn load_pair(pair: &CertPair, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(&pair.cert)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertInFile {
            path: pair.cert.clone(),
        });
    }
    let key = read_key(&pair.key)?;
    let signing =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|_| TlsError::KeyUnusable {
                path: pair.key.clone(),
            })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: pair.cert.clone(),
                key: pair.key.clone(),
            })
        }
        Err(e) => Err(TlsError::CertParse {
            path: pair.cert.clone(),
            reason: e.to_string(),
        }),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every PEM `CERTIFICATE` in the file, in order.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::CertPem {
            path: path.to_owned(),
        })
}

/// The first private key in the file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC). The
/// underlying parse error is dropped on purpose: it could quote key bytes.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoKeyInFile {
            path: path.to_owned(),
        }),
        Err(_) => Err(TlsError::KeyPem {
            path: path.to_owned(),
        }),
    }
}

/// The lower-case DNS names a certificate is valid for: its dNSName SANs, or
/// its CN when it has none (and the CN looks like a host name).
fn dns_names(der: &CertificateDer<'_>, path: &Path) -> Result<Vec<String>, TlsError> {
    let parse_err = |reason: String| TlsError::CertParse {
        path: path.to_owned(),
        reason,
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| parse_err(e.to_string()))?;
    let mut names = Vec::new();
    if let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| parse_err(e.to_string()))?
    {
        for general in &san.value.general_names {
            if let GeneralName::DNSName(name) = general {
                names.push(name.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str()
                && looks_like_host_name(cn)
            {
                names.push(cn.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// A CN is used as a name only when it could be one (`*.` prefix allowed):
/// "Example Ltd" is not.
fn looks_like_host_name(cn: &str) -> bool {
    let host = cn.strip_prefix("*.").unwrap_or(cn).trim_end_matches('.');
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

// === upstream roots ===

fn ca_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = read_certs(path)?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::NoCaInFile {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let detail = match found.errors.first() {
            Some(e) => format!(": {e}"),
            None => String::new(),
        };
        return Err(TlsError::NoSystemRoots { detail });
    }
    Ok(roots)
}

// === impl NoVerification ===

/// `upstream_tls_verify = false`: accepts any server certificate for any name.
/// Handshake signatures are still checked with the provider's algorithms, so the
/// peer must hold the key for the certificate it presents; only the chain and
/// the name go unchecked.
#[derive(Debug)]
struct NoVerification {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests;
