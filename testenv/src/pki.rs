//! The control plane's PKI: a CA, the apiserver's serving certificate, an admin client
//! certificate (system:masters) and the service-account signing key.

use std::{fs, path::Path};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

pub struct Files;

impl Files {
    pub const CA: &'static str = "ca.crt";
    pub const SERVING_CERT: &'static str = "apiserver.crt";
    pub const SERVING_KEY: &'static str = "apiserver.key";
    pub const ADMIN_CERT: &'static str = "admin.crt";
    pub const ADMIN_KEY: &'static str = "admin.key";
    pub const SA_KEY: &'static str = "sa.key";
    pub const SA_PUB: &'static str = "sa.pub";
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
}

/// Writes every PEM file the control plane needs into `dir`.
pub fn generate(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(
        DnType::CommonName,
        "tooljet-operator local control plane CA",
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    fs::write(dir.join(Files::CA), ca_cert.pem())?;

    let serving_key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(vec![
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
    ])?;
    serving
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    serving
        .subject_alt_names
        .push(SanType::IpAddress([10, 0, 0, 1].into()));
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut serving);
    let serving_cert = serving.signed_by(&serving_key, &issuer)?;
    fs::write(dir.join(Files::SERVING_CERT), serving_cert.pem())?;
    write_private(&dir.join(Files::SERVING_KEY), &serving_key.serialize_pem())?;

    let admin_key = KeyPair::generate()?;
    let mut admin = CertificateParams::default();
    admin.distinguished_name = DistinguishedName::new();
    admin.distinguished_name.push(DnType::CommonName, "admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut admin);
    let admin_cert = admin.signed_by(&admin_key, &issuer)?;
    fs::write(dir.join(Files::ADMIN_CERT), admin_cert.pem())?;
    write_private(&dir.join(Files::ADMIN_KEY), &admin_key.serialize_pem())?;

    let sa_key = KeyPair::generate()?;
    write_private(&dir.join(Files::SA_KEY), &sa_key.serialize_pem())?;
    fs::write(dir.join(Files::SA_PUB), sa_key.public_key_pem())?;
    Ok(())
}

fn write_private(path: &Path, pem: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(pem.as_bytes())?;
    Ok(())
}
