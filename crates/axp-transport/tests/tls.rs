//! TLS and mutual TLS between our client and server, with a private CA.

mod support;

use std::time::Duration;

use axp_transport::{
    AxpClient, ClientOptions, ServerOptions, ServerTls, client::TlsOptions, content, pb::AgentStart,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use support::{Script, serve, texts};

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

/// A CA, a server certificate for `localhost` and a client certificate, all fresh.
fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca.pem(),
        server: leaf("localhost"),
        client: leaf("controller"),
    }
}

fn tls_client(served: &support::Served, tls: TlsOptions) -> AxpClient {
    let url = format!("https://localhost:{}", served.addr.port());
    let options = ClientOptions {
        tls: Some(tls),
        connect_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    };
    AxpClient::new(&url, options).unwrap()
}

#[tokio::test]
async fn a_client_trusting_the_private_ca_talks_tls_to_the_agent() {
    let pki = pki();
    let options = ServerOptions {
        tls: Some(ServerTls {
            cert_pem: pki.server.0.clone().into(),
            key_pem: pki.server.1.clone().into(),
            client_ca_pem: None,
        }),
        ..ServerOptions::default()
    };
    let served = serve(
        Script::Batches(vec![texts(&["secure"])], Duration::ZERO),
        options,
    )
    .await;

    let trusted = tls_client(
        &served,
        TlsOptions {
            ca_pem: Some(pki.ca_pem.clone().into()),
            ..TlsOptions::default()
        },
    );
    let messages = trusted.run("c", "e", AgentStart::default()).await.unwrap();
    assert_eq!(content::planner_view(&messages), "secure");

    // The system roots do not know our CA: the handshake must fail.
    let untrusting = tls_client(&served, TlsOptions::default());
    let error = untrusting
        .run("c", "e2", AgentStart::default())
        .await
        .unwrap_err();
    assert!(
        error.is_connect_failure() || error.code().is_some(),
        "{error}"
    );

    // A plaintext client cannot talk to a TLS agent.
    let plain = AxpClient::new(
        &format!("http://127.0.0.1:{}", served.addr.port()),
        ClientOptions::default(),
    )
    .unwrap();
    assert!(plain.run("c", "e3", AgentStart::default()).await.is_err());
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_ca() {
    let pki = pki();
    let options = ServerOptions {
        tls: Some(ServerTls {
            cert_pem: pki.server.0.clone().into(),
            key_pem: pki.server.1.clone().into(),
            client_ca_pem: Some(pki.ca_pem.clone().into()),
        }),
        ..ServerOptions::default()
    };
    let served = serve(
        Script::Batches(vec![texts(&["mutual"])], Duration::ZERO),
        options,
    )
    .await;

    let anonymous = tls_client(
        &served,
        TlsOptions {
            ca_pem: Some(pki.ca_pem.clone().into()),
            ..TlsOptions::default()
        },
    );
    assert!(
        anonymous
            .run("c", "e", AgentStart::default())
            .await
            .is_err(),
        "a client without a certificate must be refused"
    );

    let identified = tls_client(
        &served,
        TlsOptions {
            ca_pem: Some(pki.ca_pem.clone().into()),
            client_identity: Some((pki.client.0.clone().into(), pki.client.1.clone().into())),
            domain: None,
        },
    );
    let messages = identified
        .run("c", "e", AgentStart::default())
        .await
        .unwrap();
    assert_eq!(content::planner_view(&messages), "mutual");
}
