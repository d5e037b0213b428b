//! Opening the listening sockets of a service: one per `PORT`, on `INTERFACE_ADDRESS` or, when
//! it is unset, on every address (one dual-stack IPv6 socket that also takes IPv4, or IPv4
//! alone where the host has no IPv6), with `SO_REUSEADDR`, close-on-exec, non-blocking, and
//! the service's `BACKLOG`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::service::Service;

/// A port that could not be opened, named for the administrator.
#[derive(Debug, thiserror::Error)]
#[error("[SERVICE={service}]: cannot listen on {address}: {source}")]
pub struct ListenError {
    pub service: String,
    pub address: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Opens every port of `service`.
pub fn open(service: &Service) -> Result<Vec<std::net::TcpListener>, ListenError> {
    service
        .ports
        .value
        .iter()
        .map(|&port| open_port(service, port))
        .collect()
}

/// Where `service` listens for `port`: its INTERFACE_ADDRESS, or every address.
pub fn address(service: &Service, port: u16) -> SocketAddr {
    let ip = service
        .interface_address
        .value
        .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    SocketAddr::new(ip, port)
}

/// Opens one port of `service`.
pub fn open_port(service: &Service, port: u16) -> Result<std::net::TcpListener, ListenError> {
    let backlog = i32::try_from(service.limits.backlog.value).unwrap_or(i32::MAX);
    let wanted = address(service, port);
    bind(&service.name, wanted, backlog).or_else(|e| match e.source.raw_os_error() {
        // No IPv6 on this host: all IPv4 addresses.
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
            if service.interface_address.value.is_none() =>
        {
            bind(
                &service.name,
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                backlog,
            )
        }
        _ => Err(e),
    })
}

/// Opens the metrics endpoint's port (`METRICS_PORT` at `METRICS_INTERFACE_ADDRESS`).
pub fn open_metrics(address: SocketAddr) -> Result<std::net::TcpListener, ListenError> {
    bind("DISPATCHER", address, 64)
}

fn bind(
    service: &str,
    address: SocketAddr,
    backlog: i32,
) -> Result<std::net::TcpListener, ListenError> {
    let fail = |source| ListenError {
        service: service.to_string(),
        address,
        source,
    };
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    if address.is_ipv6() && address.ip().is_unspecified() {
        socket.set_only_v6(false).map_err(fail)?;
    }
    socket.bind(&address.into()).map_err(fail)?;
    socket.listen(backlog).map_err(fail)?;
    Ok(socket.into())
}
