//! Test PKI with rcgen: a CA and a server certificate for `localhost` and 127.0.0.1 signed by
//! it, written as `ca.pem`, `server.crt` (leaf + CA chain) and `server.key` into a temp dir
//! that lives as long as the [`Certs`] value.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

pub struct Certs {
    dir: TempDir,
    /// The CA certificate, PEM: what clients trust.
    pub ca_pem: String,
    pub ca_path: PathBuf,
    /// Leaf then CA, PEM: `[server] tls_cert`.
    pub cert_path: PathBuf,
    /// PKCS#8 PEM: `[server] tls_key`.
    pub key_path: PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Certs {
    /// A fresh CA and server certificate (ECDSA P-256), names `localhost` and 127.0.0.1.
    pub fn generate() -> Certs {
        let dir = tempfile::Builder::new().prefix("frappe-gateway-certs-").tempdir().expect("cert temp dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params().self_signed(&ca_key).expect("self-sign CA");
        let ca_pem = ca_cert.pem();
        let certs = Certs {
            ca_path: dir.path().join("ca.pem"),
            cert_path: dir.path().join("server.crt"),
            key_path: dir.path().join("server.key"),
            dir,
            ca_pem,
            ca_cert,
            ca_key,
        };
        std::fs::write(&certs.ca_path, &certs.ca_pem).expect("write ca.pem");
        certs.rotate_server_cert();
        certs
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issue a new server key and certificate from the same CA over `server.crt` and
    /// `server.key` (for reload tests). Returns the new leaf certificate's PEM.
    pub fn rotate_server_cert(&self) -> String {
        let key = KeyPair::generate().expect("server key");
        let leaf =
            leaf_params().signed_by(&key, &self.ca_cert, &self.ca_key).expect("sign server certificate");
        let leaf_pem = leaf.pem();
        let chain = format!("{leaf_pem}{}", self.ca_pem);
        std::fs::write(&self.cert_path, chain).expect("write server.crt");
        std::fs::write(&self.key_path, key.serialize_pem()).expect("write server.key");
        leaf_pem
    }

    /// The current `server.crt` contents (leaf + CA).
    pub fn server_chain_pem(&self) -> String {
        std::fs::read_to_string(&self.cert_path).expect("read server.crt")
    }
}

impl Certs {
    /// A leaf from the same CA valid only between the two `(year, month, day)` dates (for
    /// expired and not-yet-valid certificates), written as `<name>.crt` (leaf + CA) and
    /// `<name>.key` in the temp dir. Returns (cert path, key path).
    pub fn issue_dated(&self, name: &str, from: (i32, u8, u8), to: (i32, u8, u8)) -> (PathBuf, PathBuf) {
        let mut params = leaf_params();
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        self.write_leaf(name, params)
    }

    /// A leaf like the server's but for `names` (DNS names or IP literals), as
    /// [`Certs::issue_dated`] writes it.
    pub fn issue_for(&self, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        self.write_leaf(name, params)
    }

    fn write_leaf(&self, name: &str, params: CertificateParams) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("leaf key");
        let leaf = params.signed_by(&key, &self.ca_cert, &self.ca_key).expect("sign leaf");
        let (cert_path, key_path) =
            (self.dir().join(format!("{name}.crt")), self.dir().join(format!("{name}.key")));
        std::fs::write(&cert_path, format!("{}{}", leaf.pem(), self.ca_pem)).expect("write leaf");
        std::fs::write(&key_path, key.serialize_pem()).expect("write leaf key");
        (cert_path, key_path)
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, "frappe-gateway test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn leaf_params() -> CertificateParams {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let mut params = CertificateParams::new(names).expect("server params");
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.use_authority_key_identifier_extension = true;
    params
}
