//! Throw-away certificate authorities and serving certificates (demo, tests, bootstrap).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// A CA and a serving certificate it signed, all PEM-encoded.
#[derive(Debug, Clone)]
pub struct ServingCert {
    /// The CA certificate (what a webhook configuration's `caBundle` holds).
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's private key.
    pub key_pem: String,
}

/// Certificate generation failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot generate certificate for {names:?}: {source}")]
pub struct CertError {
    /// The names asked for.
    pub names: Vec<String>,
    /// rcgen's error.
    pub source: rcgen::Error,
}

/// Generates a new CA and a serving certificate for `names` (DNS names or IP addresses), valid for `days`.
pub fn generate(names: &[String], days: i64) -> Result<ServingCert, CertError> {
    let err = |source| CertError {
        names: names.to_vec(),
        source,
    };
    let now = OffsetDateTime::now_utc();
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, "pinhook CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - Duration::minutes(5);
    ca.not_after = now + Duration::days(days + 1);
    let ca_key = KeyPair::generate().map_err(err)?;
    let issuer = CertifiedIssuer::self_signed(ca, ca_key).map_err(err)?;

    let mut leaf = CertificateParams::new(names.to_vec()).map_err(err)?;
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("pinhook", String::as_str),
    );
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - Duration::minutes(5);
    leaf.not_after = now + Duration::days(days);
    let leaf_key = KeyPair::generate().map_err(err)?;
    let cert = leaf.signed_by(&leaf_key, &issuer).map_err(err)?;
    Ok(ServingCert {
        ca_pem: issuer.pem(),
        cert_pem: cert.pem(),
        key_pem: leaf_key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn rustls_accepts_the_generated_pair() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let c = generate(&["localhost".into(), "127.0.0.1".into()], 1).unwrap();
        assert!(c.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        crate::tls::from_pem(
            c.cert_pem.as_bytes(),
            c.key_pem.as_bytes(),
            Path::new("c"),
            Path::new("k"),
        )
        .unwrap();
    }

    #[test]
    fn mismatched_key_is_refused_with_both_paths() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let a = generate(&["localhost".into()], 1).unwrap();
        let b = generate(&["localhost".into()], 1).unwrap();
        let err = crate::tls::from_pem(
            a.cert_pem.as_bytes(),
            b.key_pem.as_bytes(),
            Path::new("tls.crt"),
            Path::new("tls.key"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tls.crt") && err.contains("tls.key"), "{err}");
    }
}
