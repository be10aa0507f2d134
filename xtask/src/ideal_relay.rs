//! `xtask ideal-relay` (internal): the bench's floor for a relay that terminates TCP. It
//! copies bytes between each client and the mail server on kernel TCP, reading nothing
//! (no gate, no POP3, Nagle off both ways): what any proxy that terminates the client's
//! connection pays for the extra hop, with nothing to do but forward. One tokio thread,
//! like the daemon's one dataplane thread. Run by `cargo xtask bench` inside the router
//! namespace.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use tokio::net::TcpStream;

/// A session is closed after this long, whatever it does.
const LIFETIME: Duration = Duration::from_secs(60);

#[derive(Args, Debug)]
pub struct IdealRelayArgs {
    /// Address to listen on, e.g. 198.51.100.1:1111.
    #[arg(long)]
    listen: SocketAddr,
    /// The mail server every session is relayed to.
    #[arg(long)]
    to: SocketAddr,
}

pub fn run(a: IdealRelayArgs) -> Result<ExitCode> {
    let to = a.to;
    crate::accept_loop::serve(a.listen, LIFETIME, move |client| relay(client, to))
}

async fn relay(mut client: TcpStream, to: SocketAddr) -> std::io::Result<()> {
    let mut server = TcpStream::connect(to).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}
