package node

// The link drivers this server offers (node/CONFIG.md, "Link drivers"):
// each import registers one; a vendor driver needs only its package and a
// line here (quantum/DRIVERS.md).
import (
	_ "qkdkms/quantum/sim" // "sim": the simulated channel
)
