//! The smallest useful client: registers with a keepalive, and says what happens to it.
//!
//! `cargo run -p ixn-client --example minimal -- 127.0.0.1:7400` against a server with the
//! embedded registry (README, "Quick start").

use std::time::Duration;

use ixn_client::{Client, ClientConfig, ClientType, Event, Registration};

#[tokio::main]
async fn main() -> Result<(), ixn_client::Error> {
    let servers: Vec<String> = std::env::args().skip(1).collect();
    let servers = if servers.is_empty() {
        vec!["127.0.0.1:7400".to_string()]
    } else {
        servers
    };
    let reg = Registration::new("MediaServer_email", ClientType::MediaServer)
        .keep_alive(Duration::from_secs(10));
    let client = Client::start(ClientConfig::new(servers, reg))?;
    let mut events = client.events();
    let r = client.registered().await?;
    println!(
        "registered on {} as ProxyClientId {} (keepalive {:?})",
        r.server, r.proxy_client_id, r.keep_alive
    );
    // Until Ctrl-C: reconnections and registrations as they come.
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            e = events.recv() => match e {
                Ok(Event::Stopped(why)) => {
                    println!("stopped: {why:?}");
                    return Ok(());
                }
                Ok(e) => println!("{e:?}"),
                Err(_) => break,
            },
        }
    }
    client.close().await;
    Ok(())
}
