//! Mutual TLS for the [TCP transport](crate::transport::tcp) (feature `tls`): rustls with the
//! `ring` crypto provider, TLS 1.3 only.
//!
//! Every node holds the cluster's CA certificate and its own certificate chain and key
//! ([`TlsConfig`]). Both ends of a connection present their certificate and verify the other's
//! against the CA, so a peer without a CA-signed certificate cannot complete a connection, let
//! alone inject a message.
//!
//! A valid certificate is not enough to speak for any node: each node's certificate must carry
//! the DNS name [`node_name`]`(its id)` as a subject alternative name. The dialer requires it
//! of the node it dials (as a server name), and the acceptor requires the dialer's certificate
//! to name the node id its hello claims. A node holding its own valid certificate can thus not
//! pretend to be another node.

use crate::types::NodeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::Arc;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

/// The DNS name (subject alternative name) that node `node`'s certificate must carry:
/// `node-<id>.synod`, for example `node-3.synod` for `NodeId(3)`.
pub fn node_name(node: NodeId) -> String {
    format!("node-{}.synod", node.0)
}

/// TLS material of one node.
pub struct TlsConfig {
    /// The cluster's CA certificate (DER): the only issuer trusted, on both sides.
    pub ca_certificate: CertificateDer<'static>,
    /// This node's certificate (DER) first, then any intermediate certificates up to the CA.
    /// The first one must carry the DNS name [`node_name`]`(node_id)`.
    pub certificate_chain: Vec<CertificateDer<'static>>,
    /// The private key (DER: PKCS#8, PKCS#1 or SEC1) of the first certificate.
    pub private_key: PrivateKeyDer<'static>,
}

impl TlsConfig {
    /// Reads the CA certificate, the certificate chain and the private key from PEM text (the
    /// first certificate of `ca_pem`, every certificate of `chain_pem`, the first key of
    /// `key_pem`).
    ///
    /// # Errors
    /// [`TlsError::Pem`] if a PEM text holds no such item or is malformed.
    pub fn from_pem(
        ca_pem: &[u8],
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<TlsConfig, TlsError> {
        let pem_error = |what: &str, error: rustls::pki_types::pem::Error| {
            TlsError::Pem(format!("{what}: {error}"))
        };
        let ca_certificate = CertificateDer::from_pem_slice(ca_pem)
            .map_err(|error| pem_error("CA certificate", error))?;
        let certificate_chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| pem_error("certificate chain", error))?;
        if certificate_chain.is_empty() {
            return Err(TlsError::Pem("certificate chain: no certificate".into()));
        }
        let private_key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|error| pem_error("private key", error))?;
        Ok(TlsConfig {
            ca_certificate,
            certificate_chain,
            private_key,
        })
    }
}

impl Clone for TlsConfig {
    fn clone(&self) -> TlsConfig {
        TlsConfig {
            ca_certificate: self.ca_certificate.clone(),
            certificate_chain: self.certificate_chain.clone(),
            private_key: self.private_key.clone_key(),
        }
    }
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        formatter
            .debug_struct("TlsConfig")
            .field("ca_certificate_bytes", &self.ca_certificate.len())
            .field("certificate_chain_len", &self.certificate_chain.len())
            .finish_non_exhaustive()
    }
}

/// The TLS material is unusable; the transport does not start. Fix the files and start again.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM text could not be read (see [`TlsConfig::from_pem`]).
    #[error("cannot read PEM: {0}")]
    Pem(String),
    /// The CA certificate is not a usable trust anchor (not a certificate, unsupported).
    #[error("unusable CA certificate: {0}")]
    CaCertificate(String),
    /// The client-certificate verifier could not be built from the CA.
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(String),
    /// rustls refused the certificate chain or key (malformed, or the key does not match the
    /// certificate).
    #[error("rustls refused the configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The rustls client and server sides built from one [`TlsConfig`].
pub(crate) struct TlsContext {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("TlsContext").finish_non_exhaustive()
    }
}

impl TlsContext {
    /// Builds the client (dialer) and server (acceptor) configurations: TLS 1.3, ring, both
    /// requiring a certificate signed by the CA.
    pub(crate) fn new(config: &TlsConfig) -> Result<TlsContext, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots
            .add(config.ca_certificate.clone())
            .map_err(|error| TlsError::CaCertificate(error.to_string()))?;
        let roots = Arc::new(roots);
        let versions = &[&rustls::version::TLS13];
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|error| TlsError::Verifier(error.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(
                config.certificate_chain.clone(),
                config.private_key.clone_key(),
            )?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                config.certificate_chain.clone(),
                config.private_key.clone_key(),
            )?;
        Ok(TlsContext {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// The dialer's TLS handshake with `peer`, whose certificate must name [`node_name`]`(peer)`.
    pub(crate) async fn connect(
        &self,
        peer: NodeId,
        stream: TcpStream,
    ) -> std::io::Result<client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(node_name(peer)).map_err(std::io::Error::other)?;
        self.connector.connect(name, stream).await
    }

    /// The acceptor's TLS handshake; the dialer must present a certificate signed by the CA.
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<server::TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }

    /// Checks that the dialer's (already verified) certificate names `node`.
    ///
    /// # Errors
    /// Why it does not, for the log.
    pub(crate) fn check_identity(
        &self,
        certificates: Option<&[CertificateDer<'static>]>,
        node: NodeId,
    ) -> Result<(), String> {
        let Some(certificate) = certificates.and_then(|chain| chain.first()) else {
            return Err("no certificate".to_string());
        };
        let name = ServerName::try_from(node_name(node)).map_err(|error| error.to_string())?;
        let certificate =
            webpki::EndEntityCert::try_from(certificate).map_err(|error| error.to_string())?;
        certificate
            .verify_is_valid_for_subject_name(&name)
            .map_err(|error| error.to_string())
    }
}
