//! A webhook receiver for tests: records every request, can be taken down and brought back
//! on the same port, and checks Standard Webhooks signatures with its own HMAC code.

use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Whether the signature is right for `secret` (a `whsec_...` string), computed here
    /// from the specification, not with Fleetyard's code.
    pub fn signed_with(&self, secret: &str) -> bool {
        let key = STANDARD.decode(secret.trim_start_matches("whsec_")).expect("a base64 secret");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(self.id.as_bytes());
        mac.update(b".");
        mac.update(self.timestamp.as_bytes());
        mac.update(b".");
        mac.update(&self.body);
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        self.signature.split(' ').any(|candidate| candidate == expected)
    }
}

pub struct Receiver {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
    server: Option<actix_web::dev::ServerHandle>,
}

async fn record(
    request: HttpRequest,
    body: web::Bytes,
    received: web::Data<Arc<Mutex<Vec<Received>>>>,
) -> HttpResponse {
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    received.lock().unwrap().push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        content_type: header("content-type"),
        body: body.to_vec(),
    });
    HttpResponse::NoContent().finish()
}

impl Receiver {
    pub async fn start() -> Receiver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut receiver = Receiver { port, received: Arc::new(Mutex::new(Vec::new())), server: None };
        receiver.up();
        receiver
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/fleetyard", self.port)
    }

    /// (Re)starts listening on the same port.
    pub fn up(&mut self) {
        let received = self.received.clone();
        let server = HttpServer::new(move || {
            App::new().app_data(web::Data::new(received.clone())).default_service(web::to(record))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", self.port))
        .expect("binding the receiver's port")
        .run();
        self.server = Some(server.handle());
        tokio::spawn(server);
    }

    /// Stops listening: deliveries fail with "connection refused".
    pub async fn down(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop(false).await;
        }
    }

    pub fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}
