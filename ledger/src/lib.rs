//! The embedded single-node ledger ("devnet peer"). Filled by the issue
//! "Run the chaincode on Fabric".
