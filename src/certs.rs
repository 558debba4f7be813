//! Certificate authorities and serving certificates (demo, tests, bootstrap): generated with
//! rcgen, read back with x509-parser.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

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

/// A PEM certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct ParseError {
    /// What was being read, e.g. `ca.crt`.
    pub what: String,
    /// Why it is unusable.
    pub reason: String,
}

/// A PEM certificate could not be read into a [`CertInfo`].
#[derive(Debug, thiserror::Error)]
pub enum CertInfoError {
    /// The text holds no PEM block.
    #[error("no PEM certificate found")]
    NoPem,
    /// A PEM block is malformed.
    #[error("invalid PEM: {0}")]
    Pem(#[source] x509_parser::error::PEMError),
    /// The DER inside is not an X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    NotX509(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    /// The subjectAltName extension cannot be read.
    #[error("unreadable subjectAltName: {0}")]
    SubjectAltName(#[source] x509_parser::error::X509Error),
    /// A validity time is out of range.
    #[error("{0}")]
    Time(#[source] time::error::ComponentRange),
}

/// Backdating of `notBefore`, so clocks a little behind still accept a new certificate.
const BACKDATE: Duration = Duration::minutes(5);

/// A certificate authority that signs serving certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// A new self-signed CA named `common_name`, valid from now until `now + validity`.
    pub fn generate(common_name: &str, validity: Duration) -> Result<Self, CertError> {
        Self::generate_at(common_name, OffsetDateTime::now_utc(), validity)
    }

    /// A new self-signed CA as if made at `now`.
    pub fn generate_at(
        common_name: &str,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<Self, CertError> {
        let err = |source| CertError {
            names: vec![common_name.to_owned()],
            source,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name.push(DnType::CommonName, common_name);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.not_before = now - BACKDATE;
        ca.not_after = now + validity;
        let not_after = ca.not_after;
        let key = KeyPair::generate().map_err(err)?;
        let key_pem = key.serialize_pem();
        let certified = CertifiedIssuer::self_signed(ca.clone(), key).map_err(err)?;
        let cert_pem = certified.pem();
        let key = KeyPair::from_pem(&key_pem).map_err(err)?;
        Ok(Self {
            issuer: Issuer::new(ca, key),
            cert_pem,
            key_pem,
            not_after: truncate(not_after),
        })
    }

    /// An existing CA: its certificate and its private key, which must belong together.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, ParseError> {
        let bad = |what: &str, reason: String| ParseError {
            what: what.to_owned(),
            reason,
        };
        let cert = CertInfo::parse(cert_pem)
            .map_err(|reason| bad("CA certificate", reason.to_string()))?;
        if !cert.is_ca {
            return Err(bad(
                "CA certificate",
                "is not a CA (basicConstraints)".into(),
            ));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| bad("CA key", e.to_string()))?;
        if key.subject_public_key_info() != cert.public_key_der {
            return Err(bad(
                "CA key",
                "does not belong to the CA certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| bad("CA certificate", e.to_string()))?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            not_after: cert.not_after,
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PEM).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// When the CA expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// A serving certificate for `names` (DNS names or IP addresses), valid for `validity` but
    /// never beyond the CA; returns the certificate and key PEM.
    pub fn issue(
        &self,
        names: &[String],
        validity: Duration,
    ) -> Result<(String, String), CertError> {
        self.issue_at(names, OffsetDateTime::now_utc(), validity)
    }

    /// A serving certificate as if issued at `now`.
    pub fn issue_at(
        &self,
        names: &[String],
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<(String, String), CertError> {
        let err = |source| CertError {
            names: names.to_vec(),
            source,
        };
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
        leaf.not_before = now - BACKDATE;
        leaf.not_after = (now + validity).min(self.not_after);
        let key = KeyPair::generate().map_err(err)?;
        let cert = leaf.signed_by(&key, &self.issuer).map_err(err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// What pinhook needs to know about a certificate it did not just make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The DNS names and IP addresses of the subjectAltName extension, as text.
    pub names: Vec<String>,
    /// Whether basicConstraints says CA.
    pub is_ca: bool,
    /// The DER SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
    /// The DER certificate.
    pub der: Vec<u8>,
}

impl CertInfo {
    /// Reads the first certificate of a PEM text.
    pub fn parse(pem: &str) -> Result<Self, CertInfoError> {
        let der = Pem::iter_from_buffer(pem.as_bytes())
            .next()
            .ok_or(CertInfoError::NoPem)?
            .map_err(CertInfoError::Pem)?
            .contents;
        Self::from_der(&der)
    }

    /// Reads every certificate of a PEM bundle.
    pub fn parse_bundle(pem: &str) -> Result<Vec<Self>, CertInfoError> {
        Pem::iter_from_buffer(pem.as_bytes())
            .map(|p| {
                p.map_err(CertInfoError::Pem)
                    .and_then(|p| Self::from_der(&p.contents))
            })
            .collect()
    }

    fn from_der(der: &[u8]) -> Result<Self, CertInfoError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(CertInfoError::NotX509)?;
        let time = |t: x509_parser::time::ASN1Time| {
            OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(CertInfoError::Time)
        };
        let names = cert
            .subject_alternative_name()
            .map_err(CertInfoError::SubjectAltName)?
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some((*d).to_owned()),
                        GeneralName::IPAddress(b) => ip_text(b),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            not_before: time(cert.validity().not_before)?,
            not_after: time(cert.validity().not_after)?,
            names,
            is_ca: cert.is_ca(),
            public_key_der: cert.public_key().raw.to_vec(),
            der: der.to_vec(),
        })
    }

    /// Whether this certificate's signature verifies with `issuer`'s public key.
    pub fn signed_by(&self, issuer: &CertInfo) -> bool {
        let (Ok((_, cert)), Ok((_, ca))) = (
            x509_parser::parse_x509_certificate(&self.der),
            x509_parser::parse_x509_certificate(&issuer.der),
        ) else {
            return false;
        };
        cert.verify_signature(Some(ca.public_key())).is_ok()
    }
}

/// An IP address SAN (4 or 16 bytes) as text.
fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}

/// Whether a PEM private key belongs to the certificate.
pub fn key_matches(cert: &CertInfo, key_pem: &str) -> bool {
    KeyPair::from_pem(key_pem).is_ok_and(|k| k.subject_public_key_info() == cert.public_key_der)
}

/// X.509 times have whole seconds.
fn truncate(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

/// Generates a new CA and a serving certificate for `names` (DNS names or IP addresses), valid for `days`.
pub fn generate(names: &[String], days: i64) -> Result<ServingCert, CertError> {
    let ca =
        Authority::generate("pinhook CA", Duration::days(days + 1)).map_err(|e| CertError {
            names: names.to_vec(),
            source: e.source,
        })?;
    let (cert_pem, key_pem) = ca.issue(names, Duration::days(days))?;
    Ok(ServingCert {
        ca_pem: ca.cert_pem,
        cert_pem,
        key_pem,
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

    #[test]
    fn a_reloaded_authority_signs_leaves_that_chain_to_it() {
        let ca = Authority::generate("test CA", Duration::days(10)).unwrap();
        let again = Authority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.not_after(), ca.not_after());
        let (cert, key) = again
            .issue(&["svc.ns.svc".into()], Duration::days(2))
            .unwrap();
        let leaf = CertInfo::parse(&cert).unwrap();
        let root = CertInfo::parse(ca.cert_pem()).unwrap();
        assert!(leaf.signed_by(&root));
        assert!(key_matches(&leaf, &key));
        assert_eq!(leaf.names, ["svc.ns.svc"]);
        assert!(!leaf.is_ca && root.is_ca);
        let other = Authority::generate("other", Duration::days(1)).unwrap();
        assert!(!leaf.signed_by(&CertInfo::parse(other.cert_pem()).unwrap()));
        assert!(!key_matches(&leaf, other.key_pem()));
    }

    #[test]
    fn a_leaf_never_outlives_its_ca() {
        let ca = Authority::generate("short CA", Duration::hours(1)).unwrap();
        let (cert, _) = ca.issue(&["a.b.svc".into()], Duration::days(90)).unwrap();
        assert_eq!(CertInfo::parse(&cert).unwrap().not_after, ca.not_after());
    }

    #[test]
    fn unreadable_certificates_say_why() {
        assert_eq!(
            CertInfo::parse("hello").unwrap_err().to_string(),
            "no PEM certificate found"
        );
        let not_x509 = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        let err = CertInfo::parse_bundle(not_x509).unwrap_err();
        assert!(matches!(err, CertInfoError::NotX509(_)), "{err:?}");
        assert!(
            err.to_string().starts_with("not an X.509 certificate: "),
            "{err}"
        );
    }

    #[test]
    fn an_authority_refuses_a_key_that_is_not_its_own() {
        let a = Authority::generate("a", Duration::days(1)).unwrap();
        let b = Authority::generate("b", Duration::days(1)).unwrap();
        let err = Authority::from_pem(a.cert_pem(), b.key_pem()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CA key: does not belong to the CA certificate"
        );
        let (leaf, leaf_key) = a.issue(&["x.y.svc".into()], Duration::days(1)).unwrap();
        let err = Authority::from_pem(&leaf, &leaf_key).unwrap_err();
        assert!(err.to_string().contains("is not a CA"), "{err}");
    }
}
