package node

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func validConfig() Config {
	return Config{
		NodeID:    "n1",
		KMEID:     "sender_app",
		Listen:    "127.0.0.1:8443",
		DataDir:   "/var/lib/qkdkms/n1",
		TLS:       TLSFiles{CA: "ca.crt", Cert: "n1.crt", Key: "n1.key"},
		KEKFile:   "site.kek",
		Bootstrap: map[string]string{"n1": "127.0.0.1:8443", "n2": "127.0.0.1:8444", "n3": "127.0.0.1:8445"},
		Peers:     map[string][]string{"receiver_app": {"127.0.0.1:9443", "127.0.0.1:9444"}},
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mut  func(*Config)
		want string // substring of the error; "" = valid
	}{
		{"valid", func(c *Config) {}, ""},
		{"joined later: no bootstrap", func(c *Config) { c.Bootstrap = nil }, ""},
		{"no node id", func(c *Config) { c.NodeID = "" }, "node_id: required"},
		{"node id with colon", func(c *Config) { c.NodeID = "a:b" }, "node_id:"},
		{"no kme id", func(c *Config) { c.KMEID = "" }, "kme_id: required"},
		{"bad listen", func(c *Config) { c.Listen = "8443" }, "listen:"},
		{"wildcard listen, no advertise", func(c *Config) { c.Listen = "0.0.0.0:8443" }, "advertise:"},
		{"wildcard listen, advertise set", func(c *Config) {
			c.Listen, c.Advertise = "0.0.0.0:8443", "127.0.0.1:8443"
		}, ""},
		{"advertise port 0", func(c *Config) { c.Advertise = "127.0.0.1:0" }, "advertise:"},
		{"no data dir", func(c *Config) { c.DataDir = "" }, "data_dir: required"},
		{"no CA", func(c *Config) { c.TLS.CA = "" }, "tls.ca: required"},
		{"no cert", func(c *Config) { c.TLS.Cert = "" }, "tls.cert: required"},
		{"no key", func(c *Config) { c.TLS.Key = "" }, "tls.key: required"},
		{"no KEK", func(c *Config) { c.KEKFile = "" }, "kek_file or kek_env"},
		{"KEK env", func(c *Config) { c.KEKFile, c.KEKEnv = "", "QKDKMS_KEK" }, ""},
		{"both KEKs", func(c *Config) { c.KEKEnv = "QKDKMS_KEK" }, "set only one"},
		{"bootstrap without self", func(c *Config) { delete(c.Bootstrap, "n1") }, "does not list this node"},
		{"bootstrap address differs", func(c *Config) { c.Bootstrap["n1"] = "127.0.0.1:9999" }, "differs from advertise"},
		{"bootstrap shared address", func(c *Config) { c.Bootstrap["n3"] = "127.0.0.1:8444" }, "share address"},
		{"bootstrap bad address", func(c *Config) { c.Bootstrap["n2"] = "nohostport" }, "bootstrap.n2"},
		{"peer is self", func(c *Config) { c.Peers["sender_app"] = []string{"127.0.0.1:1"} }, "own KME ID"},
		{"peer without address", func(c *Config) { c.Peers["x"] = nil }, "peers.x: no addresses"},
		{"peer bad address", func(c *Config) { c.Peers["receiver_app"] = []string{"x"} }, "peers.receiver_app"},
		{"Raft transport at advertise", func(c *Config) {
			_, c.RaftTransport = raft.NewInmemTransport("127.0.0.1:8443")
		}, ""},
		{"Raft transport elsewhere", func(c *Config) {
			_, c.RaftTransport = raft.NewInmemTransport("node1")
		}, "the Raft transport's address node1 differs from advertise 127.0.0.1:8443"},
		{"tiny TLS reload interval", func(c *Config) { c.TLS.ReloadInterval = Duration(time.Millisecond) }, "tls.reload_interval"},
		{"scrape identity", func(c *Config) { c.Metrics.ScrapeIdentities = []string{"metrics:prometheus", "spiffe://site/prom"} }, ""},
		{"scrape identity of an SAE", func(c *Config) { c.Metrics.ScrapeIdentities = []string{"sae:alice"} }, "SAEs may not read /metrics"},
		{"scrape identity not a URI", func(c *Config) { c.Metrics.ScrapeIdentities = []string{"prometheus"} }, "metrics.scrape_identities[0]"},
		{"link, default driver", func(c *Config) { c.Link = LinkConfig{PSKFile: "psk", Native: true} }, ""},
		{"links entry", func(c *Config) {
			c.Link = LinkConfig{PSKFile: "psk", Native: true}
			c.Links = []PeerLink{{Peer: "receiver_app", Driver: "sim", Options: []byte(`{"fiber_km": 50, "detector_efficiency": 0.2}`)}}
		}, ""},
		{"links unknown driver", func(c *Config) {
			c.Link = LinkConfig{PSKFile: "psk", Native: true}
			c.Links = []PeerLink{{Peer: "receiver_app", Driver: "laser9000"}}
		}, `unknown link driver "laser9000"`},
		{"links unknown option", func(c *Config) {
			c.Link = LinkConfig{PSKFile: "psk", Native: true}
			c.Links = []PeerLink{{Peer: "receiver_app", Driver: "sim", Options: []byte(`{"fibre_km": 50}`)}}
		}, `unknown field "fibre_km"`},
		{"links option out of range", func(c *Config) {
			c.Link = LinkConfig{PSKFile: "psk", Native: true}
			c.Links = []PeerLink{{Peer: "receiver_app", Driver: "sim", Options: []byte(`{"detector_efficiency": 2}`)}}
		}, "detector efficiency 2"},
		{"links for a stranger", func(c *Config) {
			c.Link = LinkConfig{PSKFile: "psk", Native: true}
			c.Links = []PeerLink{{Peer: "mallory", Driver: "sim"}}
		}, `links[0].peer: "mallory" is not a site in peers`},
		{"links twice", func(c *Config) {
			c.Link = LinkConfig{PSKFile: "psk", Native: true}
			c.Links = []PeerLink{{Peer: "receiver_app"}, {Peer: "receiver_app"}}
		}, "second entry"},
		{"links without a link", func(c *Config) { c.Links = []PeerLink{{Peer: "receiver_app", Driver: "sim"}} }, "link.psk_file is not"},
		{"links relay pool", func(c *Config) {
			c.Link = LinkConfig{PSKFile: "psk", Native: true}
			c.Links = []PeerLink{{Peer: "receiver_app", Driver: "sim", RelayPoolBytes: 1 << 20, RelayShare: ptr(0.25)}}
		}, ""},
		{"links relay share 0 and 1", func(c *Config) {
			c.Link = LinkConfig{PSKFile: "psk", Native: true}
			c.Peers["third_app"] = []string{"127.0.0.1:9445"}
			c.Links = []PeerLink{{Peer: "receiver_app", RelayPoolBytes: 1, RelayShare: ptr(0.0)}, {Peer: "third_app", RelayPoolBytes: 1, RelayShare: ptr(1.0)}}
		}, ""},
		{"links relay share above 1", func(c *Config) {
			c.Link = LinkConfig{PSKFile: "psk", Native: true}
			c.Links = []PeerLink{{Peer: "receiver_app", Driver: "sim", RelayPoolBytes: 1 << 20, RelayShare: ptr(1.5)}}
		}, "links[0].relay_share: 1.5 outside [0, 1]"},
		{"links relay share negative", func(c *Config) {
			c.Link = LinkConfig{PSKFile: "psk", Native: true}
			c.Links = []PeerLink{{Peer: "receiver_app", Driver: "sim", RelayShare: ptr(-0.1)}}
		}, "links[0].relay_share: -0.1 outside [0, 1]"},
		{"links relay pool negative", func(c *Config) {
			c.Link = LinkConfig{PSKFile: "psk", Native: true}
			c.Links = []PeerLink{{Peer: "receiver_app", Driver: "sim", RelayPoolBytes: -1}}
		}, "links[0].relay_pool_bytes: -1 is negative"},
		{"links driver none", func(c *Config) {
			c.Link = LinkConfig{PSKFile: "psk", Native: true}
			c.Links = []PeerLink{{Peer: "receiver_app", Driver: "none"}}
		}, ""},
		{"links driver none without a link", func(c *Config) { c.Links = []PeerLink{{Peer: "receiver_app", Driver: "none"}} }, ""},
		{"links driver none with a relay pool", func(c *Config) {
			c.Link = LinkConfig{PSKFile: "psk", Native: true}
			c.Links = []PeerLink{{Peer: "receiver_app", Driver: "none", RelayPoolBytes: 1 << 20}}
		}, `links[0]: relay_pool_bytes and relay_share need a QKD link; driver "none" has none`},
		{"links driver none with a relay share", func(c *Config) {
			c.Link = LinkConfig{PSKFile: "psk", Native: true}
			c.Links = []PeerLink{{Peer: "receiver_app", Driver: "none", RelayShare: ptr(0.5)}}
		}, `driver "none" has none`},
		{"links driver none with options", func(c *Config) {
			c.Link = LinkConfig{PSKFile: "psk", Native: true}
			c.Links = []PeerLink{{Peer: "receiver_app", Driver: "none", Options: []byte(`{"fiber_km": 5}`)}}
		}, `links[receiver_app]: driver "none" takes no options`},
		{"seed on", func(c *Config) { c.SeedListen = "127.0.0.1:8000" }, ""},
		{"seed same as listen", func(c *Config) { c.SeedListen = "127.0.0.1:8443" }, "seed_listen: same address"},
		{"seed bad", func(c *Config) { c.SeedListen = "8000" }, "seed_listen:"},
		{"negative timeout", func(c *Config) { c.Raft.HeartbeatTimeout = Duration(-time.Second) }, "raft.heartbeat_timeout: negative"},
		{"tiny timeout", func(c *Config) { c.Raft.ElectionTimeout = Duration(time.Millisecond) }, "below 5ms"},
		{"lease above heartbeat", func(c *Config) {
			c.Raft.HeartbeatTimeout, c.Raft.LeaderLeaseTimeout = Duration(time.Second), Duration(2*time.Second)
		}, "leader_lease_timeout"},
		{"election below heartbeat", func(c *Config) {
			c.Raft.HeartbeatTimeout, c.Raft.ElectionTimeout = Duration(time.Second), Duration(500*time.Millisecond)
		}, "election_timeout"},
		{"log level", func(c *Config) { c.Log.Level = "loud" }, "log.level"},
		{"log format", func(c *Config) { c.Log.Format = "xml" }, "log.format"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.mut(&c)
			err := c.WithDefaults().Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("valid config refused: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("accepted, want error containing %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q does not contain %q", err, tc.want)
			case err != nil && !errors.Is(err, ErrConfig):
				t.Fatalf("error is not ErrConfig: %v", err)
			}
		})
	}
}

func TestConfigValidateReportsAll(t *testing.T) {
	err := Config{}.WithDefaults().Validate()
	if err == nil {
		t.Fatal("empty config accepted")
	}
	for _, want := range []string{"node_id", "kme_id", "data_dir", "tls.ca", "tls.cert", "tls.key", "kek_file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %s:\n%v", want, err)
		}
	}
}

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name, json string
		want       string // error substring; "" = ok
	}{
		{"full", `{"node_id":"n1","kme_id":"k","listen":"127.0.0.1:1","advertise":"h:1","data_dir":"d",
			"tls":{"ca":"a","cert":"b","key":"c"},"kek_file":"f","kek_env":"","bootstrap":{"n1":"h:1"},
			"peers":{"p":["h:2"]},"seed_listen":"","raft":{"heartbeat_timeout":"1s","election_timeout":"1s",
			"leader_lease_timeout":"500ms","snapshot_interval":"2m","snapshot_threshold":8192,"trailing_logs":10240,"no_sync":false},
			"log":{"level":"info","format":"json","audit_file":"audit.log"}}`, ""},
		{"unknown field", `{"node_id":"n1","nodeid":"x"}`, "unknown field"},
		{"unknown nested", `{"raft":{"heartbeat":"1s"}}`, "unknown field"},
		{"bad duration", `{"raft":{"heartbeat_timeout":"soon"}}`, "invalid duration"},
		{"duration as number", `{"raft":{"heartbeat_timeout":1000}}`, "duration must be a string"},
		{"trailing data", `{"node_id":"n1"} {}`, "trailing data"},
		{"not an object", `[]`, "cannot unmarshal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.json))
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.Raft.LeaderLeaseTimeout.D() != 500*time.Millisecond || c.Peers["p"][0] != "h:2" || c.Log.AuditFile != "audit.log" {
					t.Fatalf("decoded %+v", c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrConfig) {
				t.Fatalf("err = %v, want ErrConfig containing %q", err, tc.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestParseConfigRelay: relay_share defaults to DefaultRelayShare when
// absent; an explicit 0 stays 0.
func TestParseConfigRelay(t *testing.T) {
	c, err := ParseConfig([]byte(`{"peers":{"p":["h:1"],"q":["h:2"],"r":["h:3"]},"links":[
		{"peer":"p","driver":"sim","relay_pool_bytes":4096},
		{"peer":"q","driver":"sim","relay_pool_bytes":4096,"relay_share":0},
		{"peer":"r","driver":"none"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	for peer, want := range map[string]float64{"p": DefaultRelayShare, "q": 0} {
		if pl := c.LinkFor(peer); pl.RelayPoolBytes != 4096 || pl.Share() != want {
			t.Errorf("links[%s]: relay_pool_bytes %d, share %v; want 4096, %v", peer, pl.RelayPoolBytes, pl.Share(), want)
		}
	}
	if pl := c.LinkFor("r"); pl.Driver != DriverNone || pl.RelayPoolBytes != 0 {
		t.Errorf("links[r]: %+v", pl)
	}
}
