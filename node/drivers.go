package node

// The link drivers this server offers (node/CONFIG.md, "Link drivers"):
// each import registers one; a vendor driver needs only its package and a
// line here (quantum/DRIVERS.md).
import (
	_ "qkdkms/quantum/devstream" // "devstream": recorded or live QKDS device streams
	_ "qkdkms/quantum/etsi014"   // "etsi014": devices that deliver finished keys over ETSI GS QKD 014
	_ "qkdkms/quantum/sim"       // "sim": the simulated channel
)
