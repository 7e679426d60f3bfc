package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"qkdkms/etsi/pki"
)

// ErrCompose wraps failures of docker / docker-compose commands.
var ErrCompose = errors.New("harness: compose")

// SeedOverride is the compose override, relative to the repository root,
// that opts in to the plain-HTTP seed API (node 1 of each site, published
// on the host's 127.0.0.1:8000/8001). The deployment serves none without it.
const SeedOverride = "deploy/docker-compose.seed.yml"

// ComposeOptions configures the compose-mode harness.
type ComposeOptions struct {
	// Root is the repository root (holds deploy/ and .deploy/). Required.
	Root string
	// File is the compose file (default Root/deploy/docker-compose.yml).
	File string
	// Overrides are more compose files, given after File (docker-compose
	// -f File -f Overrides[0] ...), e.g. SeedOverride to opt in to the
	// seed API. A relative path is taken from Root.
	Overrides []string
	// Dir is the directory the init service writes into (default
	// Root/.deploy): the harness reads its PKI from Dir/pki.
	Dir string
	// Sender, Receiver and Nodes must match the deployment (defaults
	// sender_app, receiver_app, 3).
	Sender, Receiver string
	Nodes            int
	Logger           *slog.Logger
}

func (o ComposeOptions) withDefaults() (ComposeOptions, error) {
	if o.Root == "" {
		return o, fmt.Errorf("%w: root is required", ErrCompose)
	}
	root, err := filepath.Abs(o.Root)
	if err != nil {
		return o, fmt.Errorf("%w: %w", ErrCompose, err)
	}
	o.Root = root
	if o.File == "" {
		o.File = filepath.Join(root, "deploy", "docker-compose.yml")
	}
	if o.Dir == "" {
		o.Dir = filepath.Join(root, ".deploy")
	}
	over := make([]string, len(o.Overrides))
	for i, f := range o.Overrides {
		if !filepath.IsAbs(f) {
			f = filepath.Join(root, f)
		}
		over[i] = f
	}
	o.Overrides = over
	if o.Sender == "" {
		o.Sender = DefaultSender
	}
	if o.Receiver == "" {
		o.Receiver = DefaultReceiver
	}
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o, nil
}

// nodeFault is what the harness has done to a node's container.
type nodeFault int

const (
	faultNone nodeFault = iota
	faultKilled
	faultPaused
	faultIsolated
)

// Compose drives the docker-compose deployment: every node is reached
// through its published host port on 127.0.0.1 with the deployment's PKI,
// and faults are docker commands on the node's container. C is a Cluster
// over that layout, so its Metrics, Leader, WaitLeader(s), HTTPClient, NodeOf,
// RegisterConnection, Status and Burned work unchanged; its process-mode
// faults (Kill, Stop, Isolate, ...) do not apply here, use Compose's.
type Compose struct {
	C *Cluster
	// Network is the compose network the nodes share (e.g. deploy_qkd).
	Network string

	o          ComposeOptions
	containers map[string]string   // node ID → container ID
	aliases    map[string][]string // node ID → DNS aliases on Network

	mu     sync.Mutex
	faults map[string]nodeFault
}

// ComposeUp runs `docker-compose -f FILE up -d --build` from the repository
// root (the init service writes the PKI and configs first) and attaches.
func ComposeUp(ctx context.Context, o ComposeOptions) (*Compose, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if _, err := composeCmd(ctx, o, "up", "-d", "--build"); err != nil {
		return nil, err
	}
	return AttachCompose(ctx, o)
}

// AttachCompose finds the running deployment's containers, their published
// ports and the compose network, and waits until every site has a leader and
// every node answers /readyz. Every node must be connected when it attaches.
func AttachCompose(ctx context.Context, o ComposeOptions) (*Compose, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	d := &Compose{o: o, containers: map[string]string{}, aliases: map[string][]string{}, faults: map[string]nodeFault{}}
	l := &Layout{Dir: o.Dir, PKIDir: filepath.Join(o.Dir, "pki")}
	for _, kme := range []string{o.Sender, o.Receiver} {
		site := &Site{KMEID: kme, KEKFile: filepath.Join(o.Dir, "kek", kme+".kek")}
		for i := 1; i <= o.Nodes; i++ {
			svc := ComposeHost(kme, i)
			out, err := composeCmd(ctx, o, "ps", "-q", svc)
			if err != nil {
				return nil, err
			}
			cid := strings.TrimSpace(string(out))
			if cid == "" || strings.Contains(cid, "\n") {
				return nil, fmt.Errorf("%w: service %s: want one container, have %q", ErrCompose, svc, cid)
			}
			in, err := inspectContainer(ctx, cid)
			if err != nil {
				return nil, err
			}
			n := &NodeSpec{ID: NodeID(kme, i), KMEID: kme, Index: i,
				ConfigPath: filepath.Join(o.Dir, "config", NodeID(kme, i)+".json"),
				DataDir:    filepath.Join(o.Dir, "data", NodeID(kme, i))}
			for port, bs := range in.HostConfig.PortBindings {
				if len(bs) == 0 {
					continue
				}
				host := net.JoinHostPort("127.0.0.1", bs[0].HostPort)
				if port == fmt.Sprintf("%d/tcp", ComposePort) {
					n.Advertise = host
				} else if site.SeedAddr == "" {
					// The only other published port: the seed API, opted in
					// with SeedOverride (host loopback only).
					site.SeedAddr = host
				}
			}
			if n.Advertise == "" {
				return nil, fmt.Errorf("%w: service %s publishes no port for %d", ErrCompose, svc, ComposePort)
			}
			n.Listen = n.Advertise
			if len(in.NetworkSettings.Networks) != 1 {
				return nil, fmt.Errorf("%w: service %s: want one network, have %d", ErrCompose, svc, len(in.NetworkSettings.Networks))
			}
			for name, nw := range in.NetworkSettings.Networks {
				if d.Network != "" && d.Network != name {
					return nil, fmt.Errorf("%w: services on networks %s and %s", ErrCompose, d.Network, name)
				}
				d.Network = name
				d.aliases[n.ID] = nw.Aliases
			}
			d.containers[n.ID] = in.ID
			site.Nodes = append(site.Nodes, n)
		}
		l.Sites = append(l.Sites, site)
	}
	d.C = &Cluster{
		opts:   Options{Sender: o.Sender, Receiver: o.Receiver, Nodes: o.Nodes, Logger: o.Logger}.withDefaults(),
		Layout: l, log: o.Logger, procs: map[string]*proc{}, https: map[string]*http.Client{},
		external: d.state,
	}
	if err := d.C.WaitLeaders(ctx); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCompose, err)
	}
	return d, nil
}

// state is the Cluster's view of a node: killed nodes are not running;
// paused and isolated ones cannot answer.
func (d *Compose) state(id string) (running, unreachable bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch d.faults[id] {
	case faultKilled:
		return false, false
	case faultPaused, faultIsolated:
		return true, true
	}
	return true, false
}

// Container returns node id's container ID ("" when unknown).
func (d *Compose) Container(id string) string { return d.containers[id] }

// ContainerState asks Docker whether node id's container runs and whether
// it is paused.
func (d *Compose) ContainerState(ctx context.Context, id string) (running, paused bool, err error) {
	if d.containers[id] == "" {
		return false, false, fmt.Errorf("%w: %s", ErrUnknownNode, id)
	}
	in, err := inspectContainer(ctx, d.containers[id])
	if err != nil {
		return false, false, err
	}
	return in.State.Running, in.State.Paused, nil
}

// IssueSAE adds a client certificate for SAE name to the deployment's PKI
// (kept when present). The nodes trust it at once: they check the CA.
func (d *Compose) IssueSAE(name string) error {
	ca, err := pki.Load(d.C.Layout.PKIDir)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrCompose, err)
	}
	return issueOnce(d.C.Layout.PKIDir, name, func() (pki.Leaf, error) { return ca.IssueSAE(name) })
}

// Kill sends SIGKILL to node id's container (`docker kill`).
func (d *Compose) Kill(ctx context.Context, id string) error {
	return d.fault(ctx, id, faultKilled, "kill", d.containers[id])
}

// StartNode starts node id's container again (`docker start`).
func (d *Compose) StartNode(ctx context.Context, id string) error {
	return d.heal(ctx, id, faultKilled, "start", d.containers[id])
}

// Pause freezes node id's container (`docker pause`, the cgroup freezer).
func (d *Compose) Pause(ctx context.Context, id string) error {
	return d.fault(ctx, id, faultPaused, "pause", d.containers[id])
}

// Unpause resumes a container frozen by Pause.
func (d *Compose) Unpause(ctx context.Context, id string) error {
	return d.heal(ctx, id, faultPaused, "unpause", d.containers[id])
}

// Isolate disconnects node id's container from the compose network: it
// loses its site, the peer site and its published port until Reconnect.
func (d *Compose) Isolate(ctx context.Context, id string) error {
	return d.fault(ctx, id, faultIsolated, "network", "disconnect", d.Network, d.containers[id])
}

// Reconnect connects an isolated node again under its DNS aliases (its
// service name and host name, which the other nodes dial).
func (d *Compose) Reconnect(ctx context.Context, id string) error {
	args := []string{"network", "connect"}
	for _, a := range d.aliases[id] {
		args = append(args, "--alias", a)
	}
	return d.heal(ctx, id, faultIsolated, append(args, d.Network, d.containers[id])...)
}

// Heal undoes every fault still in place: unpause, reconnect, start.
func (d *Compose) Heal(ctx context.Context) error {
	d.mu.Lock()
	ids := make([]string, 0, len(d.faults))
	for id := range d.faults {
		ids = append(ids, id)
	}
	d.mu.Unlock()
	sort.Strings(ids)
	var errs []error
	for _, id := range ids {
		d.mu.Lock()
		f := d.faults[id]
		d.mu.Unlock()
		switch f {
		case faultKilled:
			errs = append(errs, d.StartNode(ctx, id))
		case faultPaused:
			errs = append(errs, d.Unpause(ctx, id))
		case faultIsolated:
			errs = append(errs, d.Reconnect(ctx, id))
		}
	}
	return errors.Join(errs...)
}

// Down heals every fault and runs `docker-compose down` (data in Dir stays).
func (d *Compose) Down(ctx context.Context) error {
	herr := d.Heal(ctx)
	d.C.httpMu.Lock()
	for _, h := range d.C.https {
		h.CloseIdleConnections()
	}
	d.C.httpMu.Unlock()
	_, err := composeCmd(ctx, d.o, "down")
	return errors.Join(herr, err)
}

// ComposeDown runs `docker-compose down` for the deployment o describes,
// for a caller whose ComposeUp failed half way (no Compose to call Down on).
func ComposeDown(ctx context.Context, o ComposeOptions) error {
	o, err := o.withDefaults()
	if err != nil {
		return err
	}
	_, err = composeCmd(ctx, o, "down")
	return err
}

// Logs returns the last lines of every service's log.
func (d *Compose) Logs(ctx context.Context, lines int) string {
	out, err := composeCmd(ctx, d.o, "logs", "--no-color", fmt.Sprintf("--tail=%d", lines))
	if err != nil {
		return err.Error()
	}
	return string(out)
}

func (d *Compose) fault(ctx context.Context, id string, f nodeFault, args ...string) error {
	if d.containers[id] == "" {
		return fmt.Errorf("%w: %s", ErrUnknownNode, id)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if cur := d.faults[id]; cur != faultNone {
		return fmt.Errorf("%w: %s already under a fault (%d)", ErrCompose, id, cur)
	}
	if _, err := dockerCmd(ctx, args...); err != nil {
		return err
	}
	d.faults[id] = f
	d.C.log.Info("compose fault", "node", id, "docker", args[0])
	return nil
}

func (d *Compose) heal(ctx context.Context, id string, f nodeFault, args ...string) error {
	if d.containers[id] == "" {
		return fmt.Errorf("%w: %s", ErrUnknownNode, id)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.faults[id] != f {
		return nil // nothing to undo
	}
	if _, err := dockerCmd(ctx, args...); err != nil {
		return err
	}
	delete(d.faults, id)
	// Connections to the old endpoint are dead: dial afresh.
	d.C.httpMu.Lock()
	for _, h := range d.C.https {
		h.CloseIdleConnections()
	}
	d.C.httpMu.Unlock()
	d.C.log.Info("compose heal", "node", id, "docker", args[0])
	return nil
}

type containerInspect struct {
	ID    string `json:"Id"`
	State struct {
		Running bool `json:"Running"`
		Paused  bool `json:"Paused"`
	} `json:"State"`
	HostConfig struct {
		PortBindings map[string][]struct {
			HostIP   string `json:"HostIp"`
			HostPort string `json:"HostPort"`
		} `json:"PortBindings"`
	} `json:"HostConfig"`
	NetworkSettings struct {
		Networks map[string]struct {
			Aliases []string `json:"Aliases"`
		} `json:"Networks"`
	} `json:"NetworkSettings"`
}

func inspectContainer(ctx context.Context, cid string) (*containerInspect, error) {
	out, err := dockerCmd(ctx, "inspect", cid)
	if err != nil {
		return nil, err
	}
	var ins []containerInspect
	if err := json.Unmarshal(out, &ins); err != nil || len(ins) != 1 {
		return nil, fmt.Errorf("%w: inspect %s: %d results, %v", ErrCompose, cid, len(ins), err)
	}
	return &ins[0], nil
}

func composeCmd(ctx context.Context, o ComposeOptions, args ...string) ([]byte, error) {
	files := []string{"-f", o.File}
	for _, f := range o.Overrides {
		files = append(files, "-f", f)
	}
	cmd := exec.CommandContext(ctx, "docker-compose", append(files, args...)...)
	cmd.Dir = o.Root
	return runDocker(cmd)
}

func dockerCmd(ctx context.Context, args ...string) ([]byte, error) {
	return runDocker(exec.CommandContext(ctx, "docker", args...))
}

func runDocker(cmd *exec.Cmd) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%w: %s: %w: %s", ErrCompose, strings.Join(cmd.Args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}
