//! `BlobStore`: embedded Kubo-compatible blockstore and Kubo HTTP RPC backend.
//! Filled by the issue "IPFS adapter".
