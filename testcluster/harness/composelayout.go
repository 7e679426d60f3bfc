package harness

import (
	"net"
	"strconv"
	"strings"
)

// ComposeHost is the service/host name of node i of a site in the compose
// deployment: the KME ID with '_' turned into '-', then "-i"
// (sender_app → sender-app-1).
func ComposeHost(kmeID string, i int) string {
	return strings.ReplaceAll(kmeID, "_", "-") + "-" + strconv.Itoa(i)
}

// ComposePort is the TLS port every node listens on inside its container.
const ComposePort = 8443

// InitOptions configures DemoInitLayout.
type InitOptions struct {
	Out              string
	Nodes            int
	Sender, Receiver string
	SAEs             []string
	// Compose: node i of a site is host ComposeHost(kme, i), listening on
	// 0.0.0.0:8443; no seed API unless SeedAPI. Otherwise loopback ports
	// as in the demo (the seed API, when its port is not 0, on 127.0.0.1).
	Compose bool
	// SeedAPI (compose only) turns the plain-HTTP seed API on: node 1 of
	// each site listens on 0.0.0.0:SeedPort inside its container, which
	// deploy/docker-compose.seed.yml publishes on the host's 127.0.0.1
	// only. Off by default: the seed API has no TLS and no client
	// authentication (issue 13, item 2).
	SeedAPI                          bool
	SenderPort, ReceiverPort         int
	SenderSeedPort, ReceiverSeedPort int
	LogLevel                         string
	// Link joins the sites by a QKD link (nil: none).
	Link *LinkSpec
}

// DemoInitLayout writes the PKI, KEKs and configs for two sites.
func DemoInitLayout(o InitOptions) (*Layout, error) {
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Sender == "" {
		o.Sender = DefaultSender
	}
	if o.Receiver == "" {
		o.Receiver = DefaultReceiver
	}
	if o.SAEs == nil {
		o.SAEs = []string{"ghi", "jkl"}
	}
	lo := LayoutOptions{
		Dir: o.Out,
		Sites: []SiteSpec{
			{KMEID: o.Sender, Nodes: o.Nodes, BasePort: o.SenderPort, SeedPort: o.SenderSeedPort},
			{KMEID: o.Receiver, Nodes: o.Nodes, BasePort: o.ReceiverPort, SeedPort: o.ReceiverSeedPort},
		},
		SAEs:     o.SAEs,
		LogLevel: o.LogLevel,
		Link:     o.Link,
	}
	if o.Compose {
		lo.AdvertiseFn = func(s SiteSpec, i int) string {
			return net.JoinHostPort(ComposeHost(s.KMEID, i), strconv.Itoa(ComposePort))
		}
		lo.ListenFn = func(SiteSpec, int) string { return "0.0.0.0:" + strconv.Itoa(ComposePort) }
		lo.SeedFn = func(s SiteSpec, i int) string {
			if !o.SeedAPI || i != 1 || s.SeedPort == 0 {
				return ""
			}
			return "0.0.0.0:" + strconv.Itoa(s.SeedPort)
		}
	}
	return Generate(lo)
}
