//! The TCP transport with mutual TLS: a cluster whose certificates come from one CA works;
//! a client without a CA-signed certificate, without any certificate, without TLS, or with
//! another node's certificate cannot connect or inject a message, and the cluster keeps
//! working. Certificates are generated here with rcgen.
#![cfg(feature = "tls")]

mod tcp_support;

use futures::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use synod::transport::codec::Codec;
use synod::transport::tcp::{
    Hello, TcpConfig, TcpInbound, TcpTransport, WireFrame, HANDSHAKE_FRAME_BYTES_MAX,
    PROTOCOL_VERSION,
};
use synod::transport::tls::{node_name, TlsConfig};
use synod::{NodeId, Transport};
use tcp_support::{deliver, eventually, heartbeat, pair, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLUSTER: u64 = 0x7151;

/// A certificate authority for the test cluster.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Authority { issuer }
    }

    fn certificate(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A certificate for `node`, signed by this CA.
    fn node_tls(&self, node: u64) -> TlsConfig {
        let key = KeyPair::generate().unwrap();
        let certificate = node_params(node).signed_by(&key, &self.issuer).unwrap();
        TlsConfig {
            ca_certificate: self.certificate(),
            certificate_chain: vec![certificate.der().clone()],
            private_key: private_key(&key),
        }
    }
}

fn node_params(node: u64) -> CertificateParams {
    let mut params = CertificateParams::new(vec![node_name(NodeId(node))]).unwrap();
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, format!("node {node}"));
    params
}

fn private_key(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivatePkcs8KeyDer::from(key.serialize_der()).into()
}

/// Nodes `1..=count` with TLS from `authority`; the peer map also names node 3 when
/// `count < 3` (at a closed port), so intruders can claim a known id.
async fn tls_cluster(
    authority: &Authority,
    count: u64,
) -> (
    Vec<(TcpTransport, TcpInbound)>,
    BTreeMap<NodeId, SocketAddr>,
) {
    let mut listeners = Vec::new();
    let mut addresses = BTreeMap::new();
    for id in 1..=count {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addresses.insert(NodeId(id), listener.local_addr().unwrap());
        listeners.push(listener);
    }
    if count < 3 {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addresses.insert(NodeId(3), closed.local_addr().unwrap());
    }
    let mut nodes = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let id = index as u64 + 1;
        let config = tls_config(id, &addresses, authority.node_tls(id));
        nodes.push(TcpTransport::start_with_listener(config, listener).unwrap());
    }
    (nodes, addresses)
}

fn tls_config(id: u64, addresses: &BTreeMap<NodeId, SocketAddr>, tls: TlsConfig) -> TcpConfig {
    let mut config = TcpConfig::new(
        NodeId(id),
        CLUSTER,
        addresses[&NodeId(id)],
        addresses.clone(),
    );
    config.reconnect_backoff_min = Duration::from_millis(10);
    config.reconnect_backoff_max = Duration::from_millis(200);
    config.handshake_timeout = Duration::from_secs(2);
    config.tls = Some(tls);
    config
}

async fn still_serving(nodes: &mut [(TcpTransport, TcpInbound)], round: u64) {
    let (one, two) = pair(nodes, 0, 1);
    deliver(&mut two.0, &mut one.1, heartbeat(2, 1, round)).await;
    deliver(&mut one.0, &mut two.1, heartbeat(1, 2, round)).await;
}

#[tokio::test]
async fn a_mutual_tls_cluster_exchanges_messages() {
    let authority = Authority::new("synod test CA");
    let (mut nodes, _) = tls_cluster(&authority, 3).await;
    for round in 0..3u64 {
        for from in 0..3usize {
            for to in 0..3usize {
                if from != to {
                    let message = heartbeat(from as u64 + 1, to as u64 + 1, round);
                    let (sender, receiver) = pair(&mut nodes, from, to);
                    deliver(&mut sender.0, &mut receiver.1, message).await;
                }
            }
        }
    }
    for (transport, _) in &nodes {
        let stats = transport.stats();
        assert!(stats.dialed >= 2 && stats.accepted >= 2, "{stats:#?}");
        assert_eq!(
            stats.rejected_total() + stats.refused_total(),
            0,
            "{stats:#?}"
        );
    }
    for (transport, _) in nodes {
        transport.shutdown().await;
    }
}

/// A node added to the peer set while the transports run (`TcpTransport::peers`) is dialed
/// over TLS and accepted with its CA-signed certificate, both ways.
#[tokio::test]
async fn a_peer_added_while_running_is_reached_over_tls() {
    let authority = Authority::new("synod test CA");
    let (mut nodes, mut addresses) = tls_cluster(&authority, 2).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    addresses.insert(NodeId(4), listener.local_addr().unwrap());
    let mut four = TcpTransport::start_with_listener(
        tls_config(4, &addresses, authority.node_tls(4)),
        listener,
    )
    .unwrap();
    let one = &mut nodes[0];
    one.0.peers().set(NodeId(4), addresses[&NodeId(4)]).unwrap();
    deliver(&mut one.0, &mut four.1, heartbeat(1, 4, 1)).await;
    deliver(&mut four.0, &mut one.1, heartbeat(4, 1, 1)).await;
    let stats = one.0.stats();
    assert_eq!(
        stats.rejected_tls + stats.rejected_identity,
        0,
        "{stats:#?}"
    );
    four.0.shutdown().await;
    for (transport, _) in nodes {
        transport.shutdown().await;
    }
}

/// A TLS client that trusts `authority` (so it accepts the node's certificate) and presents
/// `identity`, if any.
fn rogue_connector(
    authority: &Authority,
    identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(authority.certificate()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((certificate, key)) => builder
            .with_client_auth_cert(vec![certificate], key)
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn hello_then_message(from: u64) -> Vec<u8> {
    let mut bytes = Codec::new(CLUSTER, HANDSHAKE_FRAME_BYTES_MAX)
        .expect("a frame size within the codec's limits")
        .encode(&WireFrame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: CLUSTER,
            from: NodeId(from),
            to: NodeId(1),
        }))
        .unwrap();
    Codec::new(CLUSTER, 1 << 20)
        .expect("a frame size within the codec's limits")
        .encode_into(&WireFrame::Message(heartbeat(from, 1, 999)), &mut bytes)
        .unwrap();
    bytes
}

/// Connects to node 1 with `connector`, sends a hello as `from` and a message, and reports
/// whether the node answered anything (a welcome) before closing.
async fn try_to_inject(
    address: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    from: u64,
) -> bool {
    let stream = TcpStream::connect(address).await.unwrap();
    let name = ServerName::try_from(node_name(NodeId(1))).unwrap();
    // With TLS 1.3 the client may finish its side before the server has checked the client's
    // certificate: the refusal then shows on the next read.
    let Ok(mut stream) = connector.connect(name, stream).await else {
        return false;
    };
    let _ = stream.write_all(&hello_then_message(from)).await;
    let _ = stream.flush().await;
    let mut buffer = [0u8; 256];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
        .await
        .expect("the node answers or closes");
    matches!(read, Ok(bytes) if bytes > 0)
}

#[tokio::test]
async fn clients_without_a_valid_certificate_are_rejected() {
    let authority = Authority::new("synod test CA");
    let (mut nodes, addresses) = tls_cluster(&authority, 2).await;
    let address = addresses[&NodeId(1)];
    let stats = nodes[0].0.stats_handle();
    still_serving(&mut nodes, 1).await;
    let received_before = stats.get().frames_received;

    // A self-signed certificate with the right name, not issued by the CA.
    let key = KeyPair::generate().unwrap();
    let self_signed = node_params(3).self_signed(&key).unwrap().der().clone();
    let connector = rogue_connector(&authority, Some((self_signed, private_key(&key))));
    assert!(!try_to_inject(address, &connector, 3).await);
    eventually(&stats, "self-signed refused", |now| now.rejected_tls == 1).await;
    still_serving(&mut nodes, 2).await;

    // A certificate from another CA.
    let stranger = Authority::new("another CA");
    let foreign = stranger.node_tls(3);
    let connector = rogue_connector(
        &authority,
        Some((foreign.certificate_chain[0].clone(), foreign.private_key)),
    );
    assert!(!try_to_inject(address, &connector, 3).await);
    eventually(&stats, "foreign CA refused", |now| now.rejected_tls == 2).await;
    still_serving(&mut nodes, 3).await;

    // No certificate at all.
    let connector = rogue_connector(&authority, None);
    assert!(!try_to_inject(address, &connector, 3).await);
    eventually(&stats, "no certificate refused", |now| {
        now.rejected_tls == 3
    })
    .await;
    still_serving(&mut nodes, 4).await;

    // No TLS at all: a plaintext hello.
    let mut plain = TcpStream::connect(address).await.unwrap();
    let _ = plain.write_all(&hello_then_message(3)).await;
    eventually(&stats, "plaintext refused", |now| now.rejected_tls == 4).await;
    // The node answers at most a TLS alert, then closes: never a synod frame.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut answer))
        .await
        .expect("the node closes the connection");
    assert!(
        !answer.windows(4).any(|window| window == b"SYND"),
        "{answer:?}"
    );
    still_serving(&mut nodes, 5).await;

    // A valid certificate for node 3 cannot speak for node 2...
    let genuine = authority.node_tls(3);
    let connector = rogue_connector(
        &authority,
        Some((genuine.certificate_chain[0].clone(), genuine.private_key)),
    );
    assert!(!try_to_inject(address, &connector, 2).await);
    eventually(&stats, "identity refused", |now| now.rejected_identity == 1).await;
    // ...only for node 3 (the control: this one is welcomed, and its message delivered).
    assert!(try_to_inject(address, &connector, 3).await);
    loop {
        let message = tokio::time::timeout(PATIENCE, nodes[0].1.next())
            .await
            .unwrap()
            .unwrap();
        if message.from == NodeId(3) {
            assert_eq!(message, heartbeat(3, 1, 999));
            break;
        }
    }
    still_serving(&mut nodes, 6).await;

    let final_stats = stats.get();
    assert_eq!(final_stats.rejected_total(), 5, "{final_stats:#?}");
    // Node 2's messages (still_serving) and the control's one: nothing from the intruders.
    assert!(final_stats.frames_received > received_before);
    for (transport, _) in nodes {
        transport.shutdown().await;
    }
}

#[tokio::test]
async fn a_node_with_another_nodes_certificate_cannot_pass_for_it() {
    let authority = Authority::new("synod test CA");
    let (mut nodes, addresses) = tls_cluster(&authority, 2).await;
    still_serving(&mut nodes, 1).await;
    let one_stats = nodes[0].0.stats_handle();
    // The real node 2 goes away; an impostor takes its address with node 3's certificate.
    let (two, _) = nodes.pop().unwrap();
    two.shutdown().await;
    let dial_failures_before = one_stats.get().dial_failures;
    let impostor_config = tls_config(2, &addresses, authority.node_tls(3));
    let (mut impostor, mut impostor_inbound) = TcpTransport::start(impostor_config).await.unwrap();
    // Node 1 refuses the impostor's server certificate (it does not name node 2)...
    eventually(&one_stats, "dials to the impostor fail", |now| {
        now.dial_failures >= dial_failures_before + 2
    })
    .await;
    // ...and the impostor's own dials to node 1 are refused (its certificate names node 3).
    for round in 0..20 {
        impostor.send(heartbeat(2, 1, round));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(&one_stats, "the impostor refused", |now| {
        now.rejected_identity >= 1
    })
    .await;
    for round in 0..20 {
        nodes[0].0.send(heartbeat(1, 2, round));
    }
    let leaked = tokio::time::timeout(Duration::from_millis(300), impostor_inbound.next()).await;
    assert!(leaked.is_err(), "the impostor received {leaked:?}");
    let stats = one_stats.get();
    assert_eq!(
        stats.rejected_identity,
        stats.rejected_total(),
        "{stats:#?}"
    );
    impostor.shutdown().await;
    for (transport, _) in nodes {
        transport.shutdown().await;
    }
}
