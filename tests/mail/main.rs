//! The mail bridge (`raftq bridge mail`) between real processes: a 3-node cluster, the
//! bridge, a Postfix instance of the test's own (Debian's package) relaying to and from
//! it, and Debian's aiosmtpd writing the mail Postfix delivers into a maildir.

mod common;
mod inbound;
mod outbound;
mod smtp;
mod tls;
