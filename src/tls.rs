//! TLS: PEM files → a rustls server config (TLS 1.2 and 1.3, ALPN h2 and http/1.1), and the
//! self-signed development certificate that `gen-cert` and `self_signed_if_missing` write.

use std::fs;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls::ServerConfig;

use crate::config::TlsFiles;

/// Builds the server config from a PEM certificate chain and private key.
/// The certificate in force: the rustls config new handshakes use, and a fingerprint of the
/// files it was read from (to tell a reload whether they changed).
pub struct Certificate {
    pub config: Arc<ServerConfig>,
    pub fingerprint: [u8; 32],
}

impl Certificate {
    pub fn load(files: &TlsFiles) -> Result<Self> {
        use sha2::Digest;
        let config = server_config(files)?;
        let mut digest = sha2::Sha256::new();
        for path in [&files.cert, &files.key] {
            digest.update(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?);
        }
        Ok(Certificate { config, fingerprint: digest.finalize().into() })
    }
}

pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| format!("{} does not match {}", files.key.display(), files.cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The notAfter of the first (the leaf) certificate in a PEM chain file: when the served
/// certificate expires.
pub fn certificate_not_after(path: &Path) -> Result<std::time::SystemTime> {
    let certs = read_certs(path)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&certs[0])
        .map_err(|e| anyhow!("{}: not an X.509 certificate: {e}", path.display()))?;
    let secs = cert.validity().not_after.timestamp();
    let since_epoch = std::time::Duration::from_secs(secs.unsigned_abs());
    Ok(match secs >= 0 {
        true => std::time::UNIX_EPOCH + since_epoch,
        false => std::time::UNIX_EPOCH - since_epoch,
    })
}

fn read_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let pem = fs::read(path).with_context(|| format!("cannot read certificate {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(&pem[..]))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>> {
    let pem = fs::read(path).with_context(|| format!("cannot read private key {}", path.display()))?;
    rustls_pemfile::private_key(&mut BufReader::new(&pem[..]))
        .with_context(|| format!("{} is not a PEM private key", path.display()))?
        .ok_or_else(|| anyhow!("{} holds no PEM private key", path.display()))
}

/// Names of the configured TLS files that do not exist.
pub fn missing_files(files: &TlsFiles) -> Vec<&Path> {
    [files.cert.as_path(), files.key.as_path()].into_iter().filter(|p| !p.exists()).collect()
}

/// Writes a self-signed certificate for `hosts` (plus localhost and 127.0.0.1) to the given
/// paths; the key file is created readable by its owner only.
pub fn write_self_signed(hosts: &[String], cert_path: &Path, key_path: &Path) -> Result<()> {
    let mut names: Vec<String> = hosts.to_vec();
    for default in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == default) {
            names.push(default.to_string());
        }
    }
    let certified = rcgen::generate_simple_self_signed(names).context("generating a certificate")?;
    for path in [cert_path, key_path] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    fs::write(cert_path, certified.cert.pem()).with_context(|| format!("writing {}", cert_path.display()))?;
    write_private(key_path, certified.key_pair.serialize_pem().as_bytes())
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(data).with_context(|| format!("writing {}", path.display()))
}

/// What `check` reports about the configured certificate: its leaf's names and validity.
#[derive(Debug, Clone)]
pub struct CertificateInfo {
    /// The leaf's subject, e.g. `CN=erp.example.com`.
    pub subject: String,
    pub issuer: String,
    /// Subject alternative names: DNS names and IP addresses, as written in the certificate.
    pub sans: Vec<String>,
    pub not_before: std::time::SystemTime,
    pub not_after: std::time::SystemTime,
    /// Certificates in the file (leaf first, then intermediates).
    pub chain_len: usize,
    pub self_signed: bool,
}

/// Which of the two TLS files an [`InspectError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
}

/// Why [`inspect`] refused the TLS files; `message` names the file.
#[derive(Debug, Clone)]
pub struct InspectError {
    pub file: TlsFile,
    pub message: String,
}

impl std::fmt::Display for InspectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InspectError {}

/// Reads the certificate chain and key the way [`server_config`] would, and also parses the
/// leaf as X.509. Fails, naming the file, when either file is missing or unreadable, is not
/// PEM, holds no certificate / key, the leaf is not valid X.509, or the key does not belong to
/// the leaf. Validity dates are returned, not judged: the caller compares them with the clock.
pub fn inspect(files: &TlsFiles) -> Result<CertificateInfo, InspectError> {
    let fail = |file: TlsFile, e: anyhow::Error| InspectError { file, message: format!("{e:#}") };
    let certs = read_certs(&files.cert).map_err(|e| fail(TlsFile::Cert, e))?;
    let info = leaf_info(&certs[0], certs.len())
        .with_context(|| format!("{} holds an unreadable certificate", files.cert.display()))
        .map_err(|e| fail(TlsFile::Cert, e))?;
    let key = read_key(&files.key).map_err(|e| fail(TlsFile::Key, e))?;
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(certs, key, &provider) {
        Ok(_) => Ok(info),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(fail(
            TlsFile::Key,
            anyhow!(
                "the private key in {} does not match the certificate in {}",
                files.key.display(),
                files.cert.display()
            ),
        )),
        Err(e) => {
            Err(fail(TlsFile::Key, anyhow!("{} cannot be used as a TLS key: {e}", files.key.display())))
        }
    }
}

fn leaf_info(der: &[u8], chain_len: usize) -> Result<CertificateInfo> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| anyhow!("{e}"))?;
    let time = |t: &x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        let magnitude = std::time::Duration::from_secs(secs.unsigned_abs());
        if secs >= 0 {
            std::time::UNIX_EPOCH + magnitude
        } else {
            std::time::UNIX_EPOCH - magnitude
        }
    };
    let sans = match cert.subject_alternative_name().map_err(|e| anyhow!("subjectAltName: {e}"))? {
        Some(ext) => ext
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_string()),
                GeneralName::IPAddress(bytes) => ip_from_bytes(bytes).map(|ip| ip.to_string()),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(CertificateInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
        not_before: time(&cert.validity().not_before),
        not_after: time(&cert.validity().not_after),
        chain_len,
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
    })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// The negotiated TLS version, for the access log.
pub fn version_name(v: Option<rustls::ProtocolVersion>) -> Option<&'static str> {
    match v? {
        rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
        rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
        _ => Some("TLS"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pair_loads_with_alpn() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles { cert: dir.path().join("c/g.crt"), key: dir.path().join("c/g.key") };
        assert_eq!(missing_files(&files).len(), 2);
        write_self_signed(&["api.example.com".into()], &files.cert, &files.key).unwrap();
        let config = server_config(&files).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(missing_files(&files).is_empty());
        let not_after = certificate_not_after(&files.cert).unwrap();
        // rcgen's default validity ends in 4096.
        assert!(not_after > std::time::SystemTime::now() + std::time::Duration::from_secs(86400 * 365));
    }

    #[test]
    fn inspect_reads_names_and_dates_and_rejects_a_foreign_key() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles { cert: dir.path().join("g.crt"), key: dir.path().join("g.key") };
        write_self_signed(&["api.example.com".into()], &files.cert, &files.key).unwrap();
        let info = inspect(&files).unwrap();
        assert_eq!(info.sans, ["api.example.com", "localhost", "127.0.0.1", "::1"]);
        assert!(info.self_signed && info.chain_len == 1);
        assert!(info.not_before <= std::time::SystemTime::now() && info.not_after > info.not_before);

        let other = TlsFiles { cert: dir.path().join("o.crt"), key: dir.path().join("o.key") };
        write_self_signed(&[], &other.cert, &other.key).unwrap();
        let mixed = TlsFiles { cert: files.cert.clone(), key: other.key.clone() };
        let e = inspect(&mixed).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");

        fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        assert!(inspect(&files).is_err());
        let gone = TlsFiles { cert: dir.path().join("none.crt"), key: files.key.clone() };
        assert!(inspect(&gone).unwrap_err().to_string().contains("none.crt"));
    }
}
