package raftstore

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/raft"

	"qkdkms/plugins/testenv"
)

// tcpSite starts n stores on loopback TCP transports with fsync on.
func tcpSite(b *testing.B, n int, noSync bool) []*Store {
	b.Helper()
	trans := make([]*raft.NetworkTransport, n)
	var servers []raft.Server
	for i := range trans {
		tr, err := raft.NewTCPTransport("127.0.0.1:0", nil, 8, 10*time.Second, io.Discard)
		if err != nil {
			b.Fatal(err)
		}
		trans[i] = tr
		servers = append(servers, raft.Server{ID: raft.ServerID(fmt.Sprint("n", i)), Address: tr.LocalAddr()})
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	stores := make([]*Store, n)
	for i := range stores {
		s, err := Open(context.Background(), Config{NodeID: fmt.Sprint("n", i), DataDir: b.TempDir(), Transport: trans[i],
			KEK: kek, Bootstrap: servers, Logger: logger, NoSync: noSync, RaftLogLevel: "error"})
		if err != nil {
			b.Fatal(err)
		}
		stores[i] = s
	}
	b.Cleanup(func() {
		for _, s := range stores {
			s.Close()
		}
		for _, t := range trans {
			t.Close()
		}
	})
	return stores
}

func waitLeader(b testing.TB, stores []*Store) *Store {
	b.Helper()
	var leader *Store
	testenv.WaitFor(b, "a leader that answers reads", func() bool {
		for _, s := range stores {
			if s.IsLeader() {
				if _, err := s.Connections(context.Background()); err == nil {
					leader = s
					return true
				}
			}
		}
		return false
	})
	return leader
}

var benchConn = Connection{MasterSAE: "master", SlaveSAE: "slave", KeySize: 256, MaxKeyPerRequest: 128}

func fillPool(b testing.TB, s *Store, keys int) {
	const blockBytes = 64 << 10
	ctx := context.Background()
	need := keys * 32
	blk := make([]byte, blockBytes)
	for i := 0; i*blockBytes < need; i++ {
		rand.Read(blk)
		if err := s.AddBlock(ctx, Block{ConnectionID: benchConn.ID(), BlockID: fmt.Sprint("b", i), Bits: blk}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSiteIssue: 32 concurrent callers issue one 256-bit key each per
// call on a 1-node and a 3-node site over loopback TCP with fsync on.
func BenchmarkSiteIssue(b *testing.B) {
	if v, err := strconv.Atoi(os.Getenv("RAFTSTORE_INFLIGHT")); err == nil {
		maxInFlight = v
	}
	if v, err := time.ParseDuration(os.Getenv("RAFTSTORE_LINGER_TICK")); err == nil {
		lingerTick = v
	}
	if v, err := time.ParseDuration(os.Getenv("RAFTSTORE_LINGER_MAX")); err == nil {
		lingerMax = v
	}
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			stores := tcpSite(b, n, os.Getenv("RAFTSTORE_NOSYNC") != "")
			l := waitLeader(b, stores)
			ctx := context.Background()
			if err := l.RegisterConnection(ctx, benchConn); err != nil {
				b.Fatal(err)
			}
			fillPool(b, l, b.N+64)
			const callers = 32
			lat := make([]time.Duration, b.N)
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for c := 0; c < callers; c++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						t0 := time.Now()
						iss, err := l.IssueKeys(ctx, IssueRequest{RequestID: uuid.NewString(), MasterSAE: "master",
							SlaveSAE: "slave", Slaves: []string{"slave"}, Size: 256, KeyIDs: []string{uuid.NewString()}})
						if err != nil || len(iss.Keys) != 1 || len(iss.Keys[0].Bits) != 32 {
							b.Errorf("issue: %v", err)
							return
						}
						lat[i] = time.Since(t0)
					}
				}()
			}
			wg.Wait()
			el := time.Since(start)
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(b.N)/el.Seconds(), "keys/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			st := l.Stats()
			if w, err := strconv.ParseFloat(st["log_writes"], 64); err == nil && w > 0 {
				b.ReportMetric(float64(b.N)/w, "ops/write")
			}
			if v, err := strconv.ParseFloat(st["ops_per_commit"], 64); err == nil {
				b.ReportMetric(v, "ops/entry")
			}
			if v, err := strconv.ParseFloat(st["commit_avg_ms"], 64); err == nil {
				b.ReportMetric(v, "commit-ms")
			}
		})
	}
}

var rssOnce sync.Once
var rssStore *Store

// BenchmarkStoredKeysRSS loads 1,000,000 256-bit keys' worth of blocks
// into a single-node store (once per process) and reports the process RSS
// and the Go heap in use, after a GC, in MB.
func BenchmarkStoredKeysRSS(b *testing.B) {
	rssOnce.Do(func() {
		_, tr := raft.NewInmemTransport("n0")
		kek := make([]byte, 32)
		rand.Read(kek)
		dir, err := os.MkdirTemp("", "rss")
		if err != nil {
			b.Fatal(err)
		}
		s, err := Open(context.Background(), Config{NodeID: "n0", DataDir: dir, Transport: tr, KEK: kek, NoSync: true,
			Bootstrap: []raft.Server{{ID: "n0", Address: "n0"}}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			RaftLogLevel: "error"})
		if err != nil {
			b.Fatal(err)
		}
		l := waitLeader(b, []*Store{s})
		if err := l.RegisterConnection(context.Background(), benchConn); err != nil {
			b.Fatal(err)
		}
		fillPool(b, l, 1_000_000)
		rssStore = l
	})
	for i := 0; i < b.N; i++ {
		if _, err := rssStore.Connection(context.Background(), "master", "slave"); err != nil {
			b.Fatal(err)
		}
	}
	st, _ := rssStore.Connection(context.Background(), "master", "slave")
	if st.StoredKeys < 1_000_000 {
		b.Fatalf("stored %d keys", st.StoredKeys)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MB")
	b.ReportMetric(rssMB(), "rss-MB")
	b.ReportMetric(float64(st.StoredKeys), "stored-keys")
}

func rssMB() float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return -1
}
