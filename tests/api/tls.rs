//! Mutual TLS: a client certificate from the configured CA is its principal; one from another
//! CA is refused at the handshake; a certificate whose name maps to no principal is
//! UNAUTHENTICATED.

use std::sync::Arc;

use customer_profile::domain::time::ManualClock;
use customer_profile::server::config::{Config, PrincipalConfig, TlsConfig};
use customer_profile::server::startup::Application;
use customer_profile::service::pb;
use pb::profile_service_client::ProfileServiceClient;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::helpers::*;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// (certificate PEM, key PEM) for `cn` with the given subject alternative names.
    fn issue(&self, cn: &str, sans: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

#[tokio::test]
async fn a_client_certificate_from_the_ca_is_its_principal() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("customer-profile test CA");
    let rogue = Ca::new("someone else's CA");
    let (server_cert, server_key) = ca.issue("localhost", &["localhost", "127.0.0.1"]);
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().join("data"),
        tls: Some(TlsConfig {
            cert_file: write("server.pem", &server_cert),
            key_file: write("server.key", &server_key),
            client_ca_file: Some(write("ca.pem", &ca.pem())),
            client_auth_optional: false,
        }),
        ..Config::default()
    };
    config.metrics.enabled = false;
    config.auth.principals.push(PrincipalConfig {
        name: "billing-backend".into(),
        department: Some("finance".into()),
        scopes: vec!["profile:read".into()],
        field_groups: vec!["*".into()],
        purpose: None,
        token_sha256: vec![],
        client_cert_names: vec!["billing-backend".into()],
    });
    let server = Application::build(config, Arc::new(ManualClock::new(START)))
        .await
        .expect("build")
        .spawn();
    let addr = server.local_addr();

    let client = |cert: (String, String), trust: &str| {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(trust))
            .identity(Identity::from_pem(cert.0, cert.1))
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://{addr}"))
            .expect("endpoint")
            .tls_config(tls)
            .expect("tls")
    };
    let get = || pb::GetProfileRequest {
        profile: Some(by_id("0192f3a4-5b6c-7d8e-9f00-112233445566")),
        ..Default::default()
    };

    // Known CA, mapped name: authenticated as billing-backend (profile:read), so the call
    // reaches the handler: NOT_FOUND for an unknown id, not an auth refusal.
    let ch = client(ca.issue("billing-backend", &[]), &ca.pem())
        .connect()
        .await
        .expect("mTLS connect");
    let err = ProfileServiceClient::new(ch)
        .get_profile(get())
        .await
        .expect_err("unknown id");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Known CA, unmapped name: the handshake succeeds, the call is UNAUTHENTICATED.
    let ch = client(ca.issue("intruder", &[]), &ca.pem())
        .connect()
        .await
        .expect("connect");
    let err = ProfileServiceClient::new(ch)
        .get_profile(get())
        .await
        .expect_err("unmapped");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // Another CA, even with the right name: refused before any request is served.
    let refused = match client(rogue.issue("billing-backend", &[]), &ca.pem())
        .connect()
        .await
    {
        Err(_) => true,
        Ok(ch) => ProfileServiceClient::new(ch)
            .get_profile(get())
            .await
            .is_err_and(|e| !matches!(e.code(), Code::NotFound | Code::Ok)),
    };
    assert!(
        refused,
        "a certificate from another CA must not get through"
    );

    server.stop().await.expect("stop");
}
