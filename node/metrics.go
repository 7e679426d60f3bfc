package node

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics is the node's own Prometheus registry (never the global one, so
// several nodes can live in one process).
type metrics struct {
	reg          *prometheus.Registry
	etsiRequests *prometheus.CounterVec
	etsiSeconds  *prometheus.HistogramVec
	forwarded    *prometheus.CounterVec
	raftRefused  prometheus.Counter
	keysIssued   *prometheus.CounterVec
}

func newMetrics(n *Node) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.etsiRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "qkdkms_etsi_requests_total",
		Help: "ETSI GS QKD 014 requests served by this node, by call and HTTP status code.",
	}, []string{"call", "code"})
	m.etsiSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "qkdkms_etsi_request_duration_seconds",
		Help:    "ETSI request latency at this node, by call.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"call"})
	m.forwarded = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "qkdkms_admin_forwarded_total",
		Help: "Admin requests proxied to the leader (result ok, or retry after not-leader/unreachable).",
	}, []string{"result"})
	m.raftRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "qkdkms_raft_streams_refused_total",
		Help: "Raft ALPN connections refused because the certificate is not of this site.",
	})
	m.keysIssued = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "qkdkms_keys_issued_total",
		Help: "Keys enc_keys issued on this node while it led the site, per connection (sum over the site's nodes for the site's issue rate).",
	}, []string{"master", "slave"})
	m.reg.MustRegister(m.etsiRequests, m.etsiSeconds, m.forwarded, m.raftRefused, m.keysIssued,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&storeCollector{n: n}, &linkCollector{n: n})
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// etsiCall names the ETSI call from a request path.
func etsiCall(path string) string {
	switch {
	case strings.HasSuffix(path, "/status"):
		return "status"
	case strings.HasSuffix(path, "/enc_keys"):
		return "enc_keys"
	case strings.HasSuffix(path, "/dec_keys"):
		return "dec_keys"
	default:
		return "other"
	}
}

// instrumentETSI counts ETSI requests by call and status code.
func (m *metrics) instrumentETSI(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(sw, r)
		call := etsiCall(r.URL.Path)
		m.etsiRequests.WithLabelValues(call, strconv.Itoa(sw.status)).Inc()
		m.etsiSeconds.WithLabelValues(call).Observe(time.Since(start).Seconds())
	})
}

type statusWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wroteHeader = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

var (
	descState     = prometheus.NewDesc("qkdkms_raft_state", "Raft state of this node (1 for the current state).", []string{"state"}, nil)
	descLeader    = prometheus.NewDesc("qkdkms_raft_is_leader", "1 when this node is the site's leader.", nil, nil)
	descTerm      = prometheus.NewDesc("qkdkms_raft_term", "Current Raft term.", nil, nil)
	descCommit    = prometheus.NewDesc("qkdkms_raft_commit_index", "Raft commit index.", nil, nil)
	descApplied   = prometheus.NewDesc("qkdkms_raft_applied_index", "Raft index applied to the FSM.", nil, nil)
	descLastLog   = prometheus.NewDesc("qkdkms_raft_last_log_index", "Last Raft log index.", nil, nil)
	descPeers     = prometheus.NewDesc("qkdkms_raft_peers", "Other voters in the configuration.", nil, nil)
	descCommitLat = prometheus.NewDesc("qkdkms_raft_commit_latency_seconds", "Raft commit latency of the store's batched commits on this node (stat: last or avg).", []string{"stat"}, nil)
	descCommits   = prometheus.NewDesc("qkdkms_raft_commits_total", "Batched Raft commits made by this node's store.", nil, nil)
	descBatched   = prometheus.NewDesc("qkdkms_raft_batched_ops_total", "Store operations carried by those commits.", nil, nil)
	descFSMKeys   = prometheus.NewDesc("qkdkms_fsm_keys", "Keys assigned and not yet erased in this node's FSM.", nil, nil)
	descFSMConns  = prometheus.NewDesc("qkdkms_fsm_connections", "Connections in this node's FSM.", nil, nil)
	descStoredK   = prometheus.NewDesc("qkdkms_pool_stored_keys", "Keys of key_size the connection's pool can still yield.", []string{"master", "slave"}, nil)
	descStoredB   = prometheus.NewDesc("qkdkms_pool_stored_bits", "Unassigned bits in the connection's pool.", []string{"master", "slave"}, nil)
	descIssued    = prometheus.NewDesc("qkdkms_keys_issued", "Keys assigned and not yet erased.", []string{"master", "slave"}, nil)
	descBurned    = prometheus.NewDesc("qkdkms_keys_burned_total", "Keys burned over the connection's life.", []string{"master", "slave"}, nil)
	descErased    = prometheus.NewDesc("qkdkms_keys_erased_total", "Keys fetched by every slave and erased.", []string{"master", "slave"}, nil)
	descBlocks    = prometheus.NewDesc("qkdkms_blocks_added_total", "Key blocks added to the connection's pool.", []string{"master", "slave"}, nil)
)

// storeCollector reads Raft stats and (on the leader) pool levels at scrape
// time. Pool metrics come from committed state and are only exported by the
// leader, so a site's dashboards sum nothing twice.
type storeCollector struct{ n *Node }

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descState, descLeader, descTerm, descCommit, descApplied, descLastLog,
		descPeers, descCommitLat, descCommits, descBatched, descFSMKeys, descFSMConns, descStoredK, descStoredB, descIssued, descBurned, descErased, descBlocks} {
		ch <- d
	}
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.n.store
	if st == nil {
		return
	}
	stats := st.Stats()
	state := stats["state"]
	for _, s := range []string{"Follower", "Candidate", "Leader", "Shutdown"} {
		v := 0.0
		if s == state {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, v, strings.ToLower(s))
	}
	leader := 0.0
	if st.IsLeader() {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, leader)
	gauge := func(d *prometheus.Desc, key string) {
		if v, err := strconv.ParseFloat(stats[key], 64); err == nil {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
		}
	}
	gauge(descTerm, "term")
	gauge(descCommit, "commit_index")
	gauge(descApplied, "applied_index")
	gauge(descLastLog, "last_log_index")
	gauge(descPeers, "num_peers")
	for _, stat := range []string{"last", "avg"} {
		if v, err := strconv.ParseFloat(stats["commit_"+stat+"_ms"], 64); err == nil {
			ch <- prometheus.MustNewConstMetric(descCommitLat, prometheus.GaugeValue, v/1000, stat)
		}
	}
	counter := func(d *prometheus.Desc, key string) {
		if v, err := strconv.ParseFloat(stats[key], 64); err == nil {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
		}
	}
	counter(descCommits, "commits")
	counter(descBatched, "batched_ops")
	gauge(descFSMKeys, "fsm_keys")
	gauge(descFSMConns, "fsm_connections")
	if !st.IsLeader() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conns, err := st.Connections(ctx)
	if err != nil {
		return
	}
	for _, cs := range conns {
		l := []string{cs.MasterSAE, cs.SlaveSAE}
		ch <- prometheus.MustNewConstMetric(descStoredK, prometheus.GaugeValue, float64(cs.StoredKeys), l...)
		ch <- prometheus.MustNewConstMetric(descStoredB, prometheus.GaugeValue, float64(cs.StoredBits), l...)
		ch <- prometheus.MustNewConstMetric(descIssued, prometheus.GaugeValue, float64(cs.IssuedKeys), l...)
		ch <- prometheus.MustNewConstMetric(descBurned, prometheus.CounterValue, float64(cs.BurnedKeys), l...)
		ch <- prometheus.MustNewConstMetric(descErased, prometheus.CounterValue, float64(cs.ErasedKeys), l...)
		ch <- prometheus.MustNewConstMetric(descBlocks, prometheus.CounterValue, float64(cs.AddedBlocks), l...)
	}
}

// QKD link metrics, from the leader's links (followers report nothing).
var (
	descLinkUp        = prometheus.NewDesc("qkdkms_link_connected", "1 when the QKD link to the peer site is up (leader only).", []string{"peer", "role"}, nil)
	descLinkSessions  = prometheus.NewDesc("qkdkms_link_sessions_total", "QKD sessions on the link by this leader, by outcome.", []string{"peer", "outcome"}, nil)
	descLinkQBER      = prometheus.NewDesc("qkdkms_link_qber", "QBER of the last successful session (X basis).", []string{"peer"}, nil)
	descLinkRate      = prometheus.NewDesc("qkdkms_link_key_rate_bits_per_second", "Key bits committed to pools per wall second over the last minute.", []string{"peer"}, nil)
	descLinkCommitted = prometheus.NewDesc("qkdkms_link_committed_bits_total", "Key bits committed to pools by this leader's link.", []string{"peer"}, nil)
	descLinkDiscarded = prometheus.NewDesc("qkdkms_link_discarded_bits_total", "Final key bits no pool could take (pools full).", []string{"peer"}, nil)
	descLinkPads      = prometheus.NewDesc("qkdkms_link_auth_pad_bytes_left", "Unused authentication pad material.", []string{"peer"}, nil)
	descLinkEve       = prometheus.NewDesc("qkdkms_link_eve_fraction", "Fraction of pulses the simulated eavesdropper attacks.", []string{"peer"}, nil)
	descLinkMismatch  = prometheus.NewDesc("qkdkms_link_plugin_mismatch", "1 while the two sites want different step plugins.", []string{"peer"}, nil)
	descLinkStep      = prometheus.NewDesc("qkdkms_link_step_seconds", "Wall time of each post-processing step (plugin call and its messages) in the last committed session, at this site.", []string{"peer", "step"}, nil)
	descLinkDriverOK  = prometheus.NewDesc("qkdkms_link_driver_ok", "1 while the link's driver reports its device usable, by driver.", []string{"peer", "driver"}, nil)
	descRelayPool     = prometheus.NewDesc("qkdkms_relay_pool_bytes", "Relay key available at this site on the link to the peer, for relaying to it (out) or from it (in); node/CONFIG.md, \"Relay pool\".", []string{"peer", "direction"}, nil)
)

type linkCollector struct{ n *Node }

func (c *linkCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLinkUp, descLinkSessions, descLinkQBER, descLinkRate, descLinkCommitted,
		descLinkDiscarded, descLinkPads, descLinkEve, descLinkMismatch, descLinkDriverOK, descLinkStep, descRelayPool} {
		ch <- d
	}
}

func (c *linkCollector) Collect(ch chan<- prometheus.Metric) {
	if c.n.links == nil || c.n.store == nil || !c.n.store.IsLeader() {
		return
	}
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	for _, s := range c.n.links.statuses() {
		ch <- prometheus.MustNewConstMetric(descLinkUp, prometheus.GaugeValue, b(s.Connected), s.Peer, s.Role)
		ch <- prometheus.MustNewConstMetric(descLinkSessions, prometheus.CounterValue, float64(s.Sessions), s.Peer, "ok")
		ch <- prometheus.MustNewConstMetric(descLinkSessions, prometheus.CounterValue, float64(s.Aborted), s.Peer, "aborted")
		ch <- prometheus.MustNewConstMetric(descLinkQBER, prometheus.GaugeValue, s.LastQBER, s.Peer)
		ch <- prometheus.MustNewConstMetric(descLinkRate, prometheus.GaugeValue, s.KeyRate, s.Peer)
		ch <- prometheus.MustNewConstMetric(descLinkCommitted, prometheus.CounterValue, float64(s.CommittedBits), s.Peer)
		ch <- prometheus.MustNewConstMetric(descLinkDiscarded, prometheus.CounterValue, float64(s.DiscardedBits), s.Peer)
		ch <- prometheus.MustNewConstMetric(descLinkPads, prometheus.GaugeValue, float64(s.AuthPadsLeft), s.Peer)
		ch <- prometheus.MustNewConstMetric(descLinkEve, prometheus.GaugeValue, s.Eve, s.Peer)
		ch <- prometheus.MustNewConstMetric(descLinkMismatch, prometheus.GaugeValue, b(s.PluginMismatch != ""), s.Peer)
		ch <- prometheus.MustNewConstMetric(descLinkDriverOK, prometheus.GaugeValue, b(s.Driver.OK), s.Peer, s.Driver.Driver)
		if s.RelayTarget > 0 || s.RelayOut > 0 || s.RelayIn > 0 {
			ch <- prometheus.MustNewConstMetric(descRelayPool, prometheus.GaugeValue, float64(s.RelayOut), s.Peer, "out")
			ch <- prometheus.MustNewConstMetric(descRelayPool, prometheus.GaugeValue, float64(s.RelayIn), s.Peer, "in")
		}
		for step, sec := range s.StepSeconds {
			ch <- prometheus.MustNewConstMetric(descLinkStep, prometheus.GaugeValue, sec, s.Peer, step)
		}
	}
}
