//! Pod networking on a host: bridge, veth, routes, nftables, DNS.
