//! (being written: interface stub until the IPMI collector lands)
#![allow(missing_docs, clippy::all)]
use muster::pb;
#[derive(Debug)]
pub enum BmcEndpoint { Local(std::path::PathBuf), Rmcp { host: String, port: u16, user: String, password: String } }
impl BmcEndpoint { pub fn parse(_s: &str, _p: Option<String>) -> Result<Self, IpmiError> { Err(IpmiError) } }
#[derive(Debug, thiserror::Error)] #[error("not built")] pub struct IpmiError;
pub struct IpmiCollector;
pub struct IpmiSnapshot { pub firmware: Option<String>, pub sensors: Vec<pb::Sensor>, pub new_sel: Vec<pb::SelEntry>, pub sel_reset: bool, pub fru: Option<pb::Fru>, pub power: pb::PowerState }
impl IpmiCollector { pub fn new(_e: BmcEndpoint, _t: std::time::Duration) -> Self { Self } pub fn collect(&mut self) -> Result<IpmiSnapshot, IpmiError> { Err(IpmiError) } pub fn sel_cursor(&self) -> Option<u16> { None } pub fn set_sel_cursor(&mut self, _c: Option<u16>) {} }
