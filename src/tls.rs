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
}
