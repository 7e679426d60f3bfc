package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
)

// TestProcessSite builds the qkdkms binary and runs a 3-node site as child
// processes configured by JSON files, with the PKI and KEK made by the
// binary itself: SIGKILL the leader, the survivors elect another, the killed
// node restarts from its data dir and catches up; SIGTERM stops the rest.
func TestProcessSite(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs child processes")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "qkdkms")
	build := exec.Command("go", "build", "-o", bin, "./cmd/qkdkms")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("qkdkms %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	pkiDir := filepath.Join(dir, "pki")
	run("certs", "init", "--pki", pkiDir, "--kme", "site_a", "--nodes", "n1,n2,n3")
	run("certs", "operator", "ops", "--kme", "site_a", "--pki", pkiDir)
	run("kek", filepath.Join(dir, "site_a.kek"))

	// Every port is bound here once and handed to its node's first process
	// (--listen-fd): no moment in which another program can take it.
	ids := []string{"n1", "n2", "n3"}
	addrs := map[string]string{}
	held := map[string]*os.File{} // "n1", "n1-seed": sockets not handed over yet
	hold := func(name string) string {
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		f, err := ln.File()
		if err != nil {
			t.Fatal(err)
		}
		ln.Close()
		held[name] = f
		t.Cleanup(func() { f.Close() })
		return ln.Addr().String()
	}
	for _, id := range ids {
		addrs[id] = hold(id)
	}
	seedAddr := hold("n1-seed")
	cfgPath := map[string]string{}
	for _, id := range ids {
		c := map[string]any{
			"node_id": id, "kme_id": "site_a", "listen": addrs[id],
			"data_dir": filepath.Join(dir, "data", id),
			"tls":      map[string]string{"ca": filepath.Join(pkiDir, "ca.crt"), "cert": filepath.Join(pkiDir, id+".crt"), "key": filepath.Join(pkiDir, id+".key")},
			"kek_file": filepath.Join(dir, "site_a.kek"), "bootstrap": addrs,
			"raft": map[string]string{"heartbeat_timeout": "300ms", "election_timeout": "300ms", "leader_lease_timeout": "150ms"},
			"log":  map[string]string{"level": "info", "format": "json", "audit_file": filepath.Join(dir, id+"-audit.log")},
		}
		if id == "n1" {
			c["seed_listen"] = seedAddr
		}
		b, _ := json.MarshalIndent(c, "", "  ")
		cfgPath[id] = filepath.Join(dir, id+".json")
		if err := os.WriteFile(cfgPath[id], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	procs := map[string]*exec.Cmd{}
	logs := map[string]*bytes.Buffer{}
	start := func(id string) {
		args := []string{"serve", "--config", cfgPath[id]}
		var files []*os.File
		for _, h := range []struct{ name, flag string }{{id, "--listen-fd"}, {id + "-seed", "--seed-listen-fd"}} {
			if f := held[h.name]; f != nil {
				args = append(args, h.flag, fmt.Sprint(3+len(files)))
				files = append(files, f)
				delete(held, h.name)
			}
		}
		cmd := exec.Command(bin, args...)
		cmd.ExtraFiles = files
		logs[id] = &bytes.Buffer{}
		cmd.Stderr = logs[id]
		err := cmd.Start()
		for _, f := range files {
			f.Close() // the node holds the port now; a restart binds it again
		}
		if err != nil {
			t.Fatal(err)
		}
		procs[id] = cmd
	}
	t.Cleanup(func() {
		for _, c := range procs {
			if c.ProcessState == nil {
				_ = c.Process.Kill()
				_ = c.Wait()
			}
		}
	})
	for _, id := range ids {
		start(id)
	}

	admin := func(addrList ...string) *AdminClient {
		c, err := NewAdminClient(addrList, filepath.Join(pkiDir, "ca.crt"), filepath.Join(pkiDir, "ops.crt"), filepath.Join(pkiDir, "ops.key"))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	leaderOf := func(via ...string) ServersResponse {
		t.Helper()
		var res ServersResponse
		testenv.WaitFor(t, "a leader", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			r, err := admin(via...).Servers(ctx)
			res = r
			return err == nil && r.Leader != ""
		})
		return res
	}
	res := leaderOf(addrs["n1"], addrs["n2"], addrs["n3"])
	if len(res.Servers) != 3 {
		t.Fatalf("servers: %+v", res)
	}
	first := res.Leader
	t.Logf("leader %s", first)

	// SIGKILL the leader; ask a survivor.
	_ = procs[first].Process.Kill()
	_ = procs[first].Wait()
	var survivors []string
	for _, id := range ids {
		if id != first {
			survivors = append(survivors, addrs[id])
		}
	}
	var second string
	testenv.WaitFor(t, "a new leader", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		r, err := admin(survivors...).Servers(ctx)
		second = r.Leader
		return err == nil && r.Leader != "" && r.Leader != first
	})
	t.Logf("after SIGKILL of %s: leader %s", first, second)

	// The killed node restarts from its data dir and reports ready.
	start(first)
	testenv.WaitFor(t, first+" ready", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		r, err := admin(addrs[first]).Servers(ctx)
		if err != nil || r.Leader == "" {
			return false
		}
		out, err := exec.CommandContext(ctx, "curl", "-sf", "--cacert", filepath.Join(pkiDir, "ca.crt"),
			"--cert", filepath.Join(pkiDir, "ops.crt"), "--key", filepath.Join(pkiDir, "ops.key"),
			"https://"+addrs[first]+"/readyz").Output()
		if err != nil {
			// curl may be missing: fall back to the admin answer alone.
			if _, lookErr := exec.LookPath("curl"); lookErr != nil {
				return true
			}
			return false
		}
		return strings.Contains(string(out), `"ready":true`)
	})

	// The CLI admin client agrees.
	out := run("servers", "--server", addrs[first], "--pki", pkiDir, "--identity", "ops", "--json")
	var sr ServersResponse
	if err := json.Unmarshal([]byte(out), &sr); err != nil || len(sr.Servers) != 3 {
		t.Fatalf("qkdkms servers: %v %s", err, out)
	}

	// The plain-HTTP seed listener of n1 answers.
	testenv.WaitFor(t, "seed /ping", func() bool {
		resp, err := http.Get("http://" + seedAddr + "/ping")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	// SIGTERM everyone: each exits 0.
	for _, id := range ids {
		_ = procs[id].Process.Signal(syscall.SIGTERM)
	}
	for _, id := range ids {
		if err := procs[id].Wait(); err != nil {
			t.Errorf("%s exit: %v\n%s", id, err, tail(logs[id].String(), 2000))
		}
	}
	n1log := logs["n1"].String()
	if !strings.Contains(n1log, "SEED-COMPATIBLE PLAIN-HTTP LISTENER IS ON") {
		t.Errorf("n1 did not warn about the seed listener:\n%s", tail(n1log, 2000))
	}
	for _, id := range ids {
		if !strings.Contains(logs[id].String(), `"msg":"node stopped"`) {
			t.Errorf("%s did not log a clean stop", id)
		}
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("...%s", s[len(s)-n:])
}
