//! The serving certificate: loaded from PEM files, with HTTP/2 and HTTP/1.1 offered over ALPN.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The path.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The PEM is malformed or empty.
    #[error("{file}: {message}")]
    Pem {
        /// The path.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("certificate {cert} and key {key} do not form a usable pair: {source}")]
    Pair {
        /// The certificate path.
        cert: String,
        /// The key path.
        key: String,
        /// rustls' error.
        source: rustls::Error,
    },
}

/// Builds a server configuration from PEM files on disk (regular files of at most
/// [`MAX_PEM_BYTES`](crate::reload::MAX_PEM_BYTES)).
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let read = |p: &Path| {
        crate::reload::read_bounded(p, crate::reload::MAX_PEM_BYTES).map_err(|source| {
            TlsError::Read {
                file: p.display().to_string(),
                source,
            }
        })
    };
    from_pem(&read(cert)?, &read(key)?, cert, key)
}

/// Builds a server configuration from PEM bytes; the paths only name them in errors.
pub fn from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &Path,
    key: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let pem_err = |file: &Path, message: String| TlsError::Pem {
        file: file.display().to_string(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, format!("invalid certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(pem_err(cert, "no certificate found".into()));
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| pem_err(key, format!("no usable private key: {e}")))?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|source| TlsError::Pair {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
