//! A lean gRPC client for the open-loop runs of one fixed unary call (GetProfile by id, echo):
//! HTTP/2 straight from the `h2` crate, with every request message encoded before the run.
//!
//! Why: the flood offers four times the server's maximum rate from one core. Through tonic's
//! channel a call costs the load generator about as much as a refusal costs the server (a
//! buffer task, hyper's dispatch task, the request's encoding, decoding the refusal's message
//! and details), so at that rate the load generator itself fell behind its schedule and its
//! lateness was measured as the server's latency. Here a call is: take a stream slot, send
//! HEADERS and one DATA frame, read the reply's HEADERS, DATA and trailers, and read the status
//! code. The reply message is not decoded (its size is checked). The runs compared with each
//! other (GetProfile and echo at the same rate, half load and flood) use the same client.

use anyhow::{Context, anyhow};
use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use prost::Message;
use tokio::net::TcpStream;

use super::workload::{Outcome, Scenario, Workload};

/// One connection's request sender.
#[derive(Clone)]
pub struct LeanConn {
    send: SendRequest<Bytes>,
}

/// Opens an HTTP/2 connection to `target` (`http://host:port`); its frames are read and written
/// by a task of its own.
pub async fn connect(target: &str) -> anyhow::Result<LeanConn> {
    let uri: Uri = target.parse().with_context(|| format!("target {target}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("target {target} has no host:port"))?
        .as_str()
        .to_string();
    let tcp = TcpStream::connect(&authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    tcp.set_nodelay(true)?;
    let (send, connection) = h2::client::Builder::new()
        // Windows large enough that flow control never holds a reply back.
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake::<_, Bytes>(tcp)
        .await
        .with_context(|| format!("HTTP/2 handshake with {authority}"))?;
    tokio::spawn(async move {
        // Ends when the connection closes; its calls then fail and say so.
        let _ = connection.await;
    });
    Ok(LeanConn { send })
}

/// The calls a run sends: one method, the request messages framed for gRPC, picked in turn.
pub struct LeanCalls {
    uri: Uri,
    bodies: Vec<Bytes>,
}

impl LeanCalls {
    /// The calls of `w`'s scenario, addressed to `target`; `None` for a scenario this client
    /// does not speak (only GetProfile by id and echo).
    pub fn of(w: &Workload, target: &str) -> anyhow::Result<Option<LeanCalls>> {
        let (path, bodies): (&str, Vec<Bytes>) = match w.scenario {
            Scenario::GetById => (
                "/customer_profile.v1.ProfileService/GetProfile",
                w.profile_ids
                    .iter()
                    .map(|id| framed(&super::workload::get_by_id_request(id)))
                    .collect(),
            ),
            Scenario::Echo => (
                "/cpbench.echo.v1.EchoService/Echo",
                vec![framed(&crate::echo_pb::EchoRequest {
                    payload: w.echo_request.clone(),
                })],
            ),
            _ => return Ok(None),
        };
        if bodies.is_empty() {
            return Err(anyhow!("no request to send: the workload has no customers"));
        }
        let uri = format!("{}{path}", target.trim_end_matches('/'))
            .parse()
            .with_context(|| format!("target {target}"))?;
        Ok(Some(LeanCalls { uri, bodies }))
    }

    /// The framed request message for call number `seq`.
    pub fn body(&self, seq: u64) -> Bytes {
        // A multiplicative hash spreads consecutive calls over the customers.
        let i = (seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) as usize % self.bodies.len();
        self.bodies[i].clone()
    }

    /// Sends one call on `conn` and reads its status.
    pub async fn call(&self, conn: &LeanConn, body: Bytes) -> Outcome {
        match self.exchange(conn, body).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed(tonic::Status::unavailable(format!("lean client: {e}"))),
        }
    }

    async fn exchange(&self, conn: &LeanConn, body: Bytes) -> anyhow::Result<Outcome> {
        let mut send = conn.send.clone().ready().await?;
        let mut req = Request::new(());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        h.insert("te", HeaderValue::from_static("trailers"));
        let (reply, mut stream) = send.send_request(req, false)?;
        stream.send_data(body, true)?;
        let reply = reply.await?;
        if reply.status() != http::StatusCode::OK {
            return Ok(Outcome::Failed(tonic::Status::unknown(format!(
                "HTTP status {}",
                reply.status()
            ))));
        }
        // A reply without a message carries its status in its headers (trailers-only).
        if let Some(outcome) = status_of(reply.headers()) {
            return Ok(outcome);
        }
        let mut body = reply.into_body();
        let mut bytes = 0usize;
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            bytes += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await?.unwrap_or_default();
        match status_of(&trailers) {
            Some(Outcome::Ok(_)) if bytes < 5 => Ok(Outcome::Failed(tonic::Status::internal(
                "OK without a reply message",
            ))),
            Some(outcome) => Ok(outcome),
            None => Ok(Outcome::Failed(tonic::Status::internal(
                "reply ended without grpc-status",
            ))),
        }
    }
}

/// The outcome a `grpc-status` header says, if there is one.
fn status_of(headers: &HeaderMap) -> Option<Outcome> {
    let code = headers.get("grpc-status")?;
    let code = code.to_str().ok().and_then(|c| c.parse::<i32>().ok());
    Some(match code {
        Some(0) => Outcome::Ok(None),
        Some(c) => {
            let message = headers
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .unwrap_or("")
                .to_string();
            Outcome::Failed(tonic::Status::new(tonic::Code::from_i32(c), message))
        }
        None => Outcome::Failed(tonic::Status::internal("unreadable grpc-status")),
    })
}

/// A message in gRPC's length-prefixed framing (uncompressed).
fn framed(m: &impl Message) -> Bytes {
    let len = m.encoded_len();
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    b.put_u32(len as u32);
    // Encoding into a buffer of the right capacity cannot fail.
    let _ = m.encode(&mut b);
    b.freeze()
}
