//! The echo baseline: a bare tonic unary server set up like customer-profile's (multi-thread
//! tokio runtime with `enable_all`, `Server::builder()` defaults, a tokio `TcpListener`
//! stream), whose one RPC replies with a fixed payload the size of a typical GetProfile reply.
//! Whatever customer-profile costs beyond this is the service's own work.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

/// mimalloc, as in customer-profile: the baseline runs with the same allocator as the service, so the ratio compares like with like.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use tonic::transport::{Server, server::TcpIncoming};
use tonic::{Request, Response, Status};

mod pb {
    tonic::include_proto!("cpbench.echo.v1");
}

use pb::echo_service_server::{EchoService, EchoServiceServer};

#[derive(Parser)]
#[command(about = "Echo baseline for the customer-profile benchmark (bare tonic unary server).")]
struct Args {
    /// Listen address; port 0 picks a free port (the chosen address is printed on stderr).
    #[arg(long, default_value = "127.0.0.1:50061")]
    listen: SocketAddr,
    /// Size of every reply's payload in bytes (measure a typical GetProfile reply with
    /// `loadgen probe` and pass it here).
    #[arg(long, default_value_t = 1024)]
    reply_bytes: usize,
}

struct Echo {
    reply: Bytes,
}

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(
        &self,
        _request: Request<pb::EchoRequest>,
    ) -> Result<Response<pb::EchoResponse>, Status> {
        Ok(Response::new(pb::EchoResponse {
            payload: self.reply.clone(),
        }))
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match customer_profile::server::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    // Readiness is checked the same way as for customer-profile: grpc.health.v1 SERVING.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<EchoServiceServer<Echo>>()
        .await;
    eprintln!(
        "echo-server listening on {addr}, reply {} bytes",
        args.reply_bytes
    );
    let echo = Echo {
        reply: Bytes::from(vec![b'x'; args.reply_bytes]),
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    Server::builder()
        .add_service(health_service)
        .add_service(EchoServiceServer::new(echo))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}
