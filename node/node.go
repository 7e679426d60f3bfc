// Package node wires a qkdkms node: one mutual-TLS port that carries the
// ETSI GS QKD 014 API, the node-to-node and KME-to-KME internal API, the
// admin API, metrics and (by ALPN) Raft; the replicated site store; the KME
// backend; and an optional plain-HTTP seed-compatible listener.
//
// See node/CONFIG.md for the configuration reference.
package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"qkdkms/etsi/pki"
	"qkdkms/node/link"
	"qkdkms/raftstore"
)

// Node is one member of a KME site.
type Node struct {
	cfg    Config
	logger *slog.Logger
	audit  *slog.Logger
	closer []io.Closer // log files

	cert      tls.Certificate
	pool      *x509.CertPool
	serverTLS *tls.Config
	clientTLS *tls.Config
	tlsr      *tlsReloader // the current certificate, CA bundle and CRL

	mux       *mux
	transport *raft.NetworkTransport
	conns     *connTracker
	store     *raftstore.Store
	services  *services
	links     *links // nil without link.psk_file

	siteClient *http.Client // node-to-node within the site, requires kme:<KMEID>
	httpSrv    *http.Server
	seedSrv    *http.Server
	seedLn     net.Listener
	metrics    *metrics
	disc       *discovery // nil without discovery (discovery.go)

	startOnce sync.Once
	closeOnce sync.Once
	closeErr  error
	serveWG   sync.WaitGroup
}

// New validates cfg, loads certificates and the KEK, binds the node's port
// and opens the replicated store (joining Raft). HTTP is served after Start.
func New(ctx context.Context, cfg Config) (_ *Node, err error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, conns: newConnTracker()}
	defer func() {
		if err != nil {
			n.abort()
		}
	}()
	if err := n.setupLogs(); err != nil {
		return nil, err
	}
	if err := n.setupTLS(); err != nil {
		return nil, err
	}
	kek, err := n.loadKEK()
	if err != nil {
		return nil, err
	}
	defer clear(kek)

	ln := cfg.Listener
	if ln == nil {
		ln, err = net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("node: listen %s: %w", cfg.Listen, err)
		}
	}
	n.metrics = newMetrics(n)
	n.metrics.reg.MustRegister(n.tlsr)
	n.mux = newMux(n.conns.wrapListener(ln), n.serverTLS, cfg.KMEID, n.logger.With("component", "mux"))
	n.mux.refusedRaft = n.metrics.raftRefused.Inc
	go n.mux.serve()

	var transport raft.Transport = cfg.RaftTransport
	if transport == nil {
		stream := newStreamLayer(n.mux, n.clientTLS, staticAddr(cfg.Advertise))
		stream.dialConfig = func(host string) *tls.Config {
			return n.tlsr.clientConfig(host, []string{RaftALPN}, requireKME(cfg.KMEID))
		}
		stream.track = n.conns
		n.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream:  stream,
			MaxPool: 3,
			Timeout: 10 * time.Second,
			Logger:  n.hclog("raft-net"),
		})
		transport = n.transport
	}

	var boot []raft.Server
	for _, id := range sortedKeys(cfg.Bootstrap) {
		boot = append(boot, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(cfg.Bootstrap[id])})
	}
	n.store, err = raftstore.Open(ctx, raftstore.Config{
		NodeID:             cfg.NodeID,
		DataDir:            cfg.DataDir,
		Transport:          transport,
		KEK:                kek,
		Bootstrap:          boot,
		Logger:             n.logger.With("component", "raftstore"),
		NoSync:             cfg.Raft.NoSync,
		HeartbeatTimeout:   cfg.Raft.HeartbeatTimeout.D(),
		ElectionTimeout:    cfg.Raft.ElectionTimeout.D(),
		LeaderLeaseTimeout: cfg.Raft.LeaderLeaseTimeout.D(),
		SnapshotThreshold:  cfg.Raft.SnapshotThreshold,
		SnapshotInterval:   cfg.Raft.SnapshotInterval.D(),
		TrailingLogs:       cfg.Raft.TrailingLogs,
	})
	if err != nil {
		return nil, fmt.Errorf("node: open store: %w", err)
	}

	// Every node-to-node dial takes the current TLS material (tlsreload.go).
	siteTr := n.conns.httpTransport(nil)
	siteTr.DialTLSContext = n.tlsr.dialTLS(n.conns.dial, requireKME(cfg.KMEID))
	n.siteClient = &http.Client{Transport: siteTr}
	peerTr := n.conns.httpTransport(nil)
	peerTr.DialTLSContext = n.tlsr.dialTLS(n.conns.dial, requireAnyKME)
	n.services = newServices(n, &http.Client{Transport: peerTr})
	if n.links, err = newLinks(ctx, n); err != nil {
		return nil, err
	}
	if n.links != nil {
		serve := n.links.serve
		n.mux.onLink.Store(&serve)
	}

	n.httpSrv = newHTTPServer(n.routes(), cfg.HTTP, n.logger.With("component", "http"))
	if cfg.SeedListen != "" && n.services.seed != nil {
		n.seedLn = cfg.SeedListener
		if n.seedLn == nil {
			n.seedLn, err = net.Listen("tcp", cfg.SeedListen)
		}
		if err != nil {
			return nil, fmt.Errorf("node: seed listener %s: %w", cfg.SeedListen, err)
		}
		n.seedSrv = newHTTPServer(n.services.seed, cfg.HTTP, n.logger.With("component", "seed-http"))
	}
	n.logger.Info("node ready", "node_id", cfg.NodeID, "kme_id", cfg.KMEID, "listen", ln.Addr().String(),
		"advertise", cfg.Advertise, "bootstrap", len(boot) > 0)
	return n, nil
}

// Start serves HTTP on the node's port (and the seed listener when
// configured). It returns at once.
func (n *Node) Start() {
	n.startOnce.Do(func() {
		n.serveWG.Add(1)
		go func() {
			defer n.serveWG.Done()
			err := n.httpSrv.Serve(newLimitListener(newChanListener(n.mux, n.mux.httpCh), n.cfg.HTTP.MaxConns, nil))
			if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, ErrMuxClosed) {
				n.logger.Error("HTTP server stopped", "err", err)
			}
		}()
		if n.seedSrv != nil {
			n.logger.Warn("SEED-COMPATIBLE PLAIN-HTTP LISTENER IS ON: no TLS, no client authentication; "+
				"anyone who can reach it can register connections and fetch keys", "addr", n.seedLn.Addr().String())
			n.serveWG.Add(1)
			go func() {
				defer n.serveWG.Done()
				if err := n.seedSrv.Serve(newLimitListener(n.seedLn, n.cfg.HTTP.MaxConns, nil)); err != nil && !errors.Is(err, http.ErrServerClosed) {
					n.logger.Error("seed listener stopped", "err", err)
				}
			}()
		}
		n.services.start()
		n.startDiscovery()
		n.tlsr.watch(n.cfg.TLS.ReloadInterval.D())
		if n.links != nil {
			n.links.start()
		}
	})
}

// Close shuts the node down gracefully: the store hands leadership to
// another voter first (when leader) and stops Raft, then HTTP servers drain
// within ctx, then the port closes.
func (n *Node) Close(ctx context.Context) error {
	n.closeOnce.Do(func() {
		var errs []error
		// Scaled down below this node's ordinal: leave the site first
		// (discovery.go).
		n.stopDiscovery()
		n.leaveIfScaledDown(ctx)
		if n.links != nil {
			n.links.stop()
		}
		n.services.stop()
		if err := n.store.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("store shutdown: %w", err))
		}
		if n.seedSrv != nil {
			if err := n.seedSrv.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("seed listener shutdown: %w", err))
			}
		}
		if err := n.httpSrv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("HTTP shutdown: %w", err))
		}
		n.finish()
		n.closeErr = errors.Join(errs...)
		n.logger.Info("node stopped", "node_id", n.cfg.NodeID)
	})
	return n.closeErr
}

// Kill stops the node abruptly, as a crash would look to its peers: every
// connection and the port are closed first, with no leadership handover
// and no draining, then Raft is stopped. Tests use it; the data directory
// stays as a crash would leave it (minus an fsync-less tail when NoSync).
func (n *Node) Kill() {
	n.closeOnce.Do(func() {
		n.stopDiscovery()
		if n.links != nil {
			n.links.stop()
		}
		n.services.stop()
		_ = n.mux.close()
		n.conns.closeAll()
		_ = n.httpSrv.Close()
		if n.seedSrv != nil {
			_ = n.seedSrv.Close()
		}
		_ = n.store.Close()
		n.finish()
		n.logger.Info("node killed", "node_id", n.cfg.NodeID)
	})
}

func (n *Node) finish() {
	n.tlsr.stop()
	_ = n.mux.close()
	if n.transport != nil {
		_ = n.transport.Close()
	}
	n.conns.closeAll()
	n.serveWG.Wait()
	for _, c := range n.closer {
		_ = c.Close()
	}
}

// abort releases what New acquired when New fails.
func (n *Node) abort() {
	if n.tlsr != nil {
		n.tlsr.stop()
	}
	if n.store != nil {
		_ = n.store.Close()
	}
	if n.transport != nil {
		_ = n.transport.Close()
	}
	if n.mux != nil {
		_ = n.mux.close()
	} else if n.cfg.Listener != nil {
		_ = n.cfg.Listener.Close()
	}
	if n.seedLn != nil {
		_ = n.seedLn.Close()
	}
	n.conns.closeAll()
	for _, c := range n.closer {
		_ = c.Close()
	}
}

// ID is the node's Raft server ID.
func (n *Node) ID() string { return n.cfg.NodeID }

// Addr is the advertised address (Raft and HTTPS).
func (n *Node) Addr() string { return n.cfg.Advertise }

// SeedAddr is the seed listener's address ("" when off).
func (n *Node) SeedAddr() string {
	if n.seedLn == nil {
		return ""
	}
	return n.seedLn.Addr().String()
}

// Store is the node's replicated site store.
func (n *Node) Store() *raftstore.Store { return n.store }

// Logger is the node's logger.
func (n *Node) Logger() *slog.Logger { return n.logger }

func (n *Node) routes() http.Handler {
	mux := http.NewServeMux()
	if n.services.etsi != nil {
		mux.Handle("/api/v1/keys/", n.metrics.instrumentETSI(n.services.etsi))
	}
	if n.services.internal != nil {
		mux.Handle("/internal/", n.services.internal)
	}
	admin := n.adminHandler()
	mux.Handle("/admin/v1/", admin)
	if n.services.adminExtra != nil {
		mux.Handle("/admin/v1/blocks", n.requireAdmin(n.refuseImportWithLink(n.services.adminExtra)))
	}
	mux.Handle("GET /metrics", n.requireScraper(n.metrics.handler()))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "node_id": n.cfg.NodeID})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, why := n.Ready()
		status := http.StatusOK
		if !ok {
			status = http.StatusServiceUnavailable
		}
		leaderID, _ := n.store.Leader()
		writeJSON(w, status, map[string]any{"ready": ok, "reason": why, "leader": leaderID, "node_id": n.cfg.NodeID})
	})
	return mux
}

// refuseImportWithLink refuses admin block imports on a site that runs QKD
// links: pools must receive blocks in the same order at both sites, and an
// import interleaved with link blocks could reach the two sites in
// different orders. Imports are for sites without a link.
func (n *Node) refuseImportWithLink(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.links != nil {
			writeAdminError(w, http.StatusConflict, CodeBadRequest,
				"this site's pools are fed by its QKD links (link.psk_file); admin block import is only for sites without a link")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Ready reports whether the site has a leader and this node's FSM has
// applied everything it knows to be committed.
func (n *Node) Ready() (bool, string) {
	if id, _ := n.store.Leader(); id == "" {
		return false, "no leader"
	}
	st := n.store.Stats()
	commit, err1 := strconv.ParseUint(st["commit_index"], 10, 64)
	applied, err2 := strconv.ParseUint(st["applied_index"], 10, 64)
	if err1 != nil || err2 != nil {
		return false, "raft stats unavailable"
	}
	if applied < commit {
		return false, fmt.Sprintf("applying: %d of %d", applied, commit)
	}
	if n.store.IsLeader() && st["leader_ready"] != "true" {
		return false, "new leader: waiting for its barrier"
	}
	return true, ""
}

func (n *Node) setupLogs() error {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(strings.ToLower(n.cfg.Log.Level))); err != nil {
		return fmt.Errorf("%w: log.level: %w", ErrConfig, err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	if n.cfg.Log.Format == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	} else {
		h = slog.NewTextHandler(os.Stderr, opts)
	}
	n.logger = slog.New(h).With("node", n.cfg.NodeID)
	if n.cfg.Logger != nil {
		n.logger = n.cfg.Logger.With("node", n.cfg.NodeID)
	}
	n.audit = n.logger.With("stream", "audit")
	if n.cfg.Log.AuditFile != "" {
		f, err := os.OpenFile(n.cfg.Log.AuditFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("node: audit log: %w", err)
		}
		n.closer = append(n.closer, f)
		n.audit = slog.New(slog.NewJSONHandler(f, nil)).With("stream", "audit", "node", n.cfg.NodeID)
	}
	return nil
}

// hclog adapts the configured level/format for hashicorp components.
func (n *Node) hclog(name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       name + "." + n.cfg.NodeID,
		Level:      hclog.LevelFromString(n.cfg.Log.Level),
		JSONFormat: n.cfg.Log.Format == "json",
		Output:     n.hclogOutput(),
	})
}

// hclogOutput is stderr, or the configured Logger (one record per line).
func (n *Node) hclogOutput() io.Writer {
	if n.cfg.Logger == nil {
		return os.Stderr
	}
	return slogWriter{n.logger}
}

type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Info(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (n *Node) setupTLS() error {
	pool, err := pki.LoadPool(n.cfg.TLS.CA)
	if err != nil {
		return fmt.Errorf("node: tls.ca: %w", err)
	}
	cert, err := pki.LoadKeyPair(n.cfg.TLS.Cert, n.cfg.TLS.Key)
	if err != nil {
		return fmt.Errorf("node: tls.cert/tls.key: %w", err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return fmt.Errorf("node: tls.cert: %w", err)
	}
	if got := pki.KMEID(leaf); got != n.cfg.KMEID {
		return fmt.Errorf("%w: tls.cert %s carries KME identity %q, want kme:%s", ErrConfig, n.cfg.TLS.Cert, got, n.cfg.KMEID)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("%w: tls.cert is not a server certificate of tls.ca: %w", ErrConfig, err)
	}
	n.cert, n.pool = cert, pool
	n.serverTLS = pki.ServerConfig(cert, pool)
	n.serverTLS.NextProtos = []string{"http/1.1", RaftALPN, link.ALPN}
	if n.cfg.RaftTransport != nil { // Raft is not on this port
		n.serverTLS.NextProtos = []string{"http/1.1", link.ALPN}
	}
	n.clientTLS = pki.ClientConfig(cert, pool)
	// From here on every handshake takes the current material, reloaded on
	// SIGHUP and when the files change (node/CONFIG.md, Rotation and
	// revocation).
	n.tlsr, err = newTLSReloader(n.cfg.TLS, n.cfg.KMEID, n.serverTLS.NextProtos, n.logger.With("component", "tls"))
	if err != nil {
		return err
	}
	n.serverTLS = n.tlsr.serverConfig()
	return nil
}

func (n *Node) loadKEK() ([]byte, error) {
	if n.cfg.KEKFile != "" {
		k, err := raftstore.LoadKEK(n.cfg.KEKFile)
		if err != nil {
			return nil, fmt.Errorf("node: kek_file: %w", err)
		}
		return k, nil
	}
	k, err := raftstore.KEKFromEnv(n.cfg.KEKEnv)
	if err != nil {
		return nil, fmt.Errorf("node: kek_env: %w", err)
	}
	return k, nil
}
