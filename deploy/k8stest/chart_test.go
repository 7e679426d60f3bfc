// Package k8stest renders the Helm chart in deploy/helm/qkdkms with the Helm
// Go SDK, for the default values and the two-site example, decodes every
// object strictly into its Go API type (an unknown field fails) and checks
// what refers to what: selectors, ports, volumes, Secrets, ConfigMap keys,
// and the node configs through the server's own strict parser and
// validation (qkdkms/node). No cluster is needed.
package k8stest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	cmv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	monv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	netv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"

	"qkdkms/node"
)

const chartDir = "../helm/qkdkms"

// rendered is one release's objects, decoded.
type rendered struct {
	name, namespace string
	values          chartutil.Values
	sts             []*appsv1.StatefulSet
	services        []*corev1.Service
	configMaps      map[string]*corev1.ConfigMap
	secrets         map[string]*corev1.Secret
	pdbs            []*policyv1.PodDisruptionBudget
	netpols         []*netv1.NetworkPolicy
	monitors        []*monv1.ServiceMonitor
	certs           []*cmv1.Certificate
	serviceAccounts map[string]*corev1.ServiceAccount
	roles           map[string]*rbacv1.Role
	roleBindings    []*rbacv1.RoleBinding
	notes           string
}

// newObject maps apiVersion/kind to the Go type a manifest must decode into.
func newObject(apiVersion, kind string) (any, bool) {
	switch apiVersion + "/" + kind {
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}, true
	case "v1/Service":
		return &corev1.Service{}, true
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, true
	case "v1/Secret":
		return &corev1.Secret{}, true
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "networking.k8s.io/v1/NetworkPolicy":
		return &netv1.NetworkPolicy{}, true
	case "monitoring.coreos.com/v1/ServiceMonitor":
		return &monv1.ServiceMonitor{}, true
	case "cert-manager.io/v1/Certificate":
		return &cmv1.Certificate{}, true
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, true
	case "rbac.authorization.k8s.io/v1/Role":
		return &rbacv1.Role{}, true
	case "rbac.authorization.k8s.io/v1/RoleBinding":
		return &rbacv1.RoleBinding{}, true
	}
	return nil, false
}

// decodeStrict turns one YAML document into obj: duplicate keys and fields
// the type does not have are errors.
func decodeStrict(doc []byte, obj any) error {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(obj); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data")
	}
	return nil
}

func renderChart(name, namespace string, valueFiles ...string) (map[string]string, chartutil.Values, error) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		return nil, nil, err
	}
	vals := map[string]any{}
	for _, f := range valueFiles {
		v, err := chartutil.ReadValuesFile(f)
		if err != nil {
			return nil, nil, err
		}
		vals = chartutil.CoalesceTables(v.AsMap(), vals)
	}
	rv, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{Name: name, Namespace: namespace, Revision: 1, IsInstall: true}, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, nil, err
	}
	files, err := engine.Render(ch, rv)
	if err != nil {
		return nil, nil, err
	}
	merged, err := rv.Table("Values")
	if err != nil {
		return nil, nil, err
	}
	return files, merged, nil
}

func render(t *testing.T, name, namespace string, valueFiles ...string) *rendered {
	t.Helper()
	files, vals, err := renderChart(name, namespace, valueFiles...)
	if err != nil {
		t.Fatalf("render %s: %v", name, err)
	}
	r := &rendered{name: name, namespace: namespace, values: vals,
		configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{},
		serviceAccounts: map[string]*corev1.ServiceAccount{}, roles: map[string]*rbacv1.Role{}}
	names := make([]string, 0, len(files))
	for f := range files {
		names = append(names, f)
	}
	sort.Strings(names)
	seen := map[string]string{}
	for _, f := range names {
		if strings.HasSuffix(f, "NOTES.txt") {
			r.notes = files[f]
			continue
		}
		if path.Ext(f) != ".yaml" {
			continue
		}
		for i, doc := range strings.Split(files[f], "\n---") {
			doc = strings.TrimPrefix(doc, "---")
			var tm metav1.TypeMeta
			var om struct {
				Metadata metav1.ObjectMeta `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Errorf("%s #%d: %v", f, i, err)
				continue
			}
			if tm.Kind == "" && strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			obj, ok := newObject(tm.APIVersion, tm.Kind)
			if !ok {
				t.Errorf("%s #%d: %s %s: no Go type known to this test", f, i, tm.APIVersion, tm.Kind)
				continue
			}
			if err := decodeStrict([]byte(doc), obj); err != nil {
				t.Errorf("%s #%d (%s): strict decode: %v\n%s", f, i, tm.Kind, err, doc)
				continue
			}
			_ = yaml.Unmarshal([]byte(doc), &om)
			key := tm.Kind + "/" + om.Metadata.Name
			if om.Metadata.Name == "" {
				t.Errorf("%s #%d: %s without a name", f, i, tm.Kind)
			}
			if other, dup := seen[key]; dup {
				t.Errorf("%s rendered twice (%s and %s)", key, other, f)
			}
			seen[key] = f
			switch o := obj.(type) {
			case *appsv1.StatefulSet:
				r.sts = append(r.sts, o)
			case *corev1.Service:
				r.services = append(r.services, o)
			case *corev1.ConfigMap:
				r.configMaps[o.Name] = o
			case *corev1.Secret:
				r.secrets[o.Name] = o
			case *policyv1.PodDisruptionBudget:
				r.pdbs = append(r.pdbs, o)
			case *netv1.NetworkPolicy:
				r.netpols = append(r.netpols, o)
			case *monv1.ServiceMonitor:
				r.monitors = append(r.monitors, o)
			case *cmv1.Certificate:
				r.certs = append(r.certs, o)
			case *corev1.ServiceAccount:
				r.serviceAccounts[o.Name] = o
			case *rbacv1.Role:
				r.roles[o.Name] = o
			case *rbacv1.RoleBinding:
				r.roleBindings = append(r.roleBindings, o)
			}
		}
	}
	if len(r.sts) != 1 {
		t.Fatalf("%s: %d StatefulSets, want 1 (one site per release)", name, len(r.sts))
	}
	return r
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// str reads a string value by dotted path.
func (r *rendered) str(t *testing.T, p string) string {
	t.Helper()
	v, err := r.values.PathValue(p)
	if err != nil {
		t.Fatalf("values %s: %v", p, err)
	}
	s, ok := v.(string)
	if !ok {
		t.Fatalf("values %s: %T, want a string", p, v)
	}
	return s
}

func (r *rendered) boolean(p string) bool {
	v, err := r.values.PathValue(p)
	if err != nil {
		return false
	}
	b, _ := v.(bool)
	return b
}

func (r *rendered) num(t *testing.T, p string) int {
	t.Helper()
	v, err := r.values.PathValue(p)
	if err != nil {
		t.Fatalf("values %s: %v", p, err)
	}
	f, ok := v.(float64)
	if !ok {
		if i, ok := v.(int64); ok {
			return int(i)
		}
		if i, ok := v.(int); ok {
			return i
		}
		t.Fatalf("values %s: %T, want a number", p, v)
	}
	return int(f)
}

// externalSecrets are the Secrets the values declare that the release reads
// and an operator (or cert-manager) creates.
func (r *rendered) externalSecrets(t *testing.T) map[string]bool {
	ext := map[string]bool{r.str(t, "kek.secretName"): true, r.str(t, "tls.secretName"): true}
	if r.boolean("link.enabled") {
		ext[r.str(t, "link.psk.secretName")] = true
	}
	if r.boolean("serviceMonitor.enabled") {
		ext[r.str(t, "serviceMonitor.clientSecret")] = true
	}
	return ext
}

// secretKeys reports whether a Secret named name may be referenced with the
// given keys: rendered ones must hold them, cert-manager's hold ca.crt,
// tls.crt and tls.key; declared external ones are trusted (listed in NOTES).
func (r *rendered) checkSecret(t *testing.T, what, name string, keys ...string) {
	t.Helper()
	if s, ok := r.secrets[name]; ok {
		for _, k := range keys {
			if _, ok := s.Data[k]; !ok {
				t.Errorf("%s: Secret %s has no key %q", what, name, k)
			}
		}
		return
	}
	for _, c := range r.certs {
		if c.Spec.SecretName == name {
			for _, k := range keys {
				if k != "ca.crt" && k != "tls.crt" && k != "tls.key" {
					t.Errorf("%s: key %q of the cert-manager Secret %s does not exist", what, k, name)
				}
			}
			return
		}
	}
	if !r.externalSecrets(t)[name] {
		t.Errorf("%s: Secret %s is neither rendered, issued by a Certificate, nor declared in values", what, name)
		return
	}
	if !strings.Contains(r.notes, name) && !r.issued(name) {
		t.Errorf("%s: external Secret %s is not listed in NOTES.txt", what, name)
	}
}

func (r *rendered) issued(secret string) bool {
	for _, c := range r.certs {
		if c.Spec.SecretName == secret {
			return true
		}
	}
	return false
}

func selects(t *testing.T, what string, sel *metav1.LabelSelector, lbls map[string]string) bool {
	t.Helper()
	if sel == nil {
		t.Errorf("%s: no selector", what)
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return false
	}
	if s.Empty() {
		t.Errorf("%s: empty selector selects every pod", what)
		return false
	}
	return s.Matches(labels.Set(lbls))
}

// checkRelease runs every cross-reference check on one release and
// returns the advertised addresses of its nodes.
func checkRelease(t *testing.T, r *rendered) []string {
	t.Helper()
	sts := r.sts[0]
	pod := sts.Spec.Template
	if !selects(t, "StatefulSet selector", sts.Spec.Selector, pod.Labels) {
		t.Errorf("StatefulSet %s: selector does not match its pod labels %v", sts.Name, pod.Labels)
	}
	replicas := int(*sts.Spec.Replicas)
	if want := r.num(t, "replicas"); replicas != want {
		t.Errorf("replicas %d, values say %d", replicas, want)
	}
	if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("podManagementPolicy %q: the bootstrap nodes must start together", sts.Spec.PodManagementPolicy)
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	ports := map[string]int32{}
	numbers := map[int32]bool{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
		numbers[p.ContainerPort] = true
	}
	portOK := func(p intstr.IntOrString) bool {
		if p.Type == intstr.String {
			_, ok := ports[p.StrVal]
			return ok
		}
		return numbers[p.IntVal]
	}
	nodePort := ports["https"]
	if nodePort == 0 {
		t.Fatalf("no container port named https: %v", c.Ports)
	}

	// Services: selectors and target ports; the headless one is the
	// StatefulSet's and publishes not-ready pods.
	var headless *corev1.Service
	for _, s := range r.services {
		if !selects(t, "Service "+s.Name, &metav1.LabelSelector{MatchLabels: s.Spec.Selector}, pod.Labels) {
			t.Errorf("Service %s selects no pod of the StatefulSet", s.Name)
		}
		for _, p := range s.Spec.Ports {
			if !portOK(p.TargetPort) {
				t.Errorf("Service %s port %s: targetPort %s is no container port", s.Name, p.Name, p.TargetPort.String())
			}
		}
		if s.Name == sts.Spec.ServiceName {
			headless = s
		}
	}
	if headless == nil {
		t.Fatalf("serviceName %s is not rendered", sts.Spec.ServiceName)
	}
	if headless.Spec.ClusterIP != corev1.ClusterIPNone || !headless.Spec.PublishNotReadyAddresses {
		t.Errorf("Service %s: clusterIP %q, publishNotReadyAddresses %v; want a headless Service publishing not-ready pods",
			headless.Name, headless.Spec.ClusterIP, headless.Spec.PublishNotReadyAddresses)
	}
	if len(r.services) < 2 {
		t.Errorf("%d Services: want the headless one and the ETSI one", len(r.services))
	}

	// PDB, anti-affinity, termination.
	if r.boolean("podDisruptionBudget.enabled") {
		if len(r.pdbs) != 1 {
			t.Fatalf("%d PodDisruptionBudgets", len(r.pdbs))
		}
		pdb := r.pdbs[0]
		if !selects(t, "PDB", pdb.Spec.Selector, pod.Labels) {
			t.Errorf("PDB %s does not select the pods", pdb.Name)
		}
		if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
			t.Errorf("PDB maxUnavailable %v, want 1", pdb.Spec.MaxUnavailable)
		}
	}
	aa := pod.Spec.Affinity
	if aa == nil || aa.PodAntiAffinity == nil {
		t.Fatal("no pod anti-affinity")
	}
	var terms []corev1.PodAffinityTerm
	terms = append(terms, aa.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution...)
	for _, w := range aa.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
		terms = append(terms, w.PodAffinityTerm)
	}
	if len(terms) == 0 {
		t.Error("anti-affinity has no term")
	}
	for _, term := range terms {
		if !selects(t, "anti-affinity", term.LabelSelector, pod.Labels) || term.TopologyKey == "" {
			t.Errorf("anti-affinity term %+v does not keep the site's pods apart", term)
		}
	}
	if g := pod.Spec.TerminationGracePeriodSeconds; g == nil || *g <= 30 {
		t.Errorf("terminationGracePeriodSeconds %v: the node drains for up to 30 s after handing leadership over", g)
	}

	// Volumes and mounts.
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = v
		switch {
		case v.ConfigMap != nil:
			cm, ok := r.configMaps[v.ConfigMap.Name]
			if !ok {
				t.Errorf("volume %s: ConfigMap %s is not rendered", v.Name, v.ConfigMap.Name)
				continue
			}
			for _, it := range v.ConfigMap.Items {
				if _, ok := cm.Data[it.Key]; !ok {
					t.Errorf("volume %s: ConfigMap %s has no key %s", v.Name, cm.Name, it.Key)
				}
			}
		case v.Secret != nil:
			var keys []string
			for _, it := range v.Secret.Items {
				keys = append(keys, it.Key)
			}
			r.checkSecret(t, "volume "+v.Name, v.Secret.SecretName, keys...)
			if m := v.Secret.DefaultMode; m == nil || *m&0o077 != 0 {
				t.Errorf("volume %s: defaultMode %v; the node refuses secret files readable by group or others", v.Name, m)
			}
		default:
			t.Errorf("volume %s: unexpected source", v.Name)
		}
	}
	for _, pvc := range sts.Spec.VolumeClaimTemplates {
		vols[pvc.Name] = corev1.Volume{Name: pvc.Name}
		if pvc.Spec.Resources.Requests.Storage().IsZero() {
			t.Errorf("volumeClaimTemplate %s: no storage request", pvc.Name)
		}
	}
	if pod.Spec.SecurityContext != nil && pod.Spec.SecurityContext.FSGroup != nil {
		t.Error("fsGroup makes Secret files group-readable, which the node refuses for the KEK and PSK")
	}
	// file maps a path in the container to the volume item it comes from.
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		if _, ok := vols[m.Name]; !ok {
			t.Errorf("volumeMount %s: no such volume", m.Name)
		}
		mounts[m.MountPath] = m.Name
	}
	file := func(what, p string) (corev1.Volume, string) {
		t.Helper()
		for dir := path.Dir(p); dir != "/" && dir != "."; dir = path.Dir(dir) {
			if name, ok := mounts[dir]; ok {
				rel := strings.TrimPrefix(p, dir+"/")
				v := vols[name]
				if v.Secret != nil && len(v.Secret.Items) > 0 {
					found := false
					for _, it := range v.Secret.Items {
						found = found || it.Path == rel
					}
					if !found {
						t.Errorf("%s %s: volume %s has no item %s", what, p, name, rel)
					}
				}
				return v, rel
			}
		}
		t.Errorf("%s %s: on no mounted volume", what, p)
		return corev1.Volume{}, ""
	}

	// The config each pod reads: args name $(POD_NAME).json in a mounted
	// ConfigMap; POD_NAME is the pod's name.
	podNameEnv := false
	for _, e := range c.Env {
		if e.Name == "POD_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name" {
			podNameEnv = true
		}
	}
	cfgArg := ""
	for i, a := range c.Args {
		if a == "--config" && i+1 < len(c.Args) {
			cfgArg = c.Args[i+1]
		}
	}
	if len(c.Args) == 0 || c.Args[0] != "serve" || cfgArg == "" || !podNameEnv || !strings.Contains(cfgArg, "$(POD_NAME)") {
		t.Fatalf("container args %v, env %v: want serve --config .../$(POD_NAME).json with POD_NAME from metadata.name", c.Args, c.Env)
	}
	cfgVol, _ := file("config", cfgArg)
	if cfgVol.ConfigMap == nil {
		t.Fatalf("config %s is not on a ConfigMap volume", cfgArg)
	}
	cm := r.configMaps[cfgVol.ConfigMap.Name]
	if cm == nil {
		t.Fatalf("ConfigMap %s not rendered", cfgVol.ConfigMap.Name)
	}
	domain := fmt.Sprintf("%s.%s.svc.%s", headless.Name, r.namespace, r.str(t, "clusterDomain"))
	leave := r.boolean("discovery.leaveOnScaleDown")
	// The SRV name the nodes look up: the headless Service's port that
	// carries the node port, as Kubernetes publishes it.
	srv := ""
	for _, p := range headless.Spec.Ports {
		if p.Port == nodePort && p.Name != "" {
			srv = fmt.Sprintf("_%s._tcp.%s", p.Name, domain)
		}
	}
	if srv == "" {
		t.Errorf("Service %s: no named port %d (the nodes find each other through its SRV records)", headless.Name, nodePort)
	}
	var advertised []string
	for i := 0; i < replicas; i++ {
		podName := fmt.Sprintf("%s-%d", sts.Name, i)
		key := strings.ReplaceAll(path.Base(cfgArg), "$(POD_NAME)", podName)
		raw, ok := cm.Data[key]
		if !ok {
			t.Errorf("pod %s: ConfigMap %s has no %s", podName, cm.Name, key)
			continue
		}
		cfg, err := node.ParseConfig([]byte(raw))
		if err != nil {
			t.Errorf("pod %s: the server refuses its config: %v\n%s", podName, err, raw)
			continue
		}
		cfg = cfg.WithDefaults()
		if err := cfg.Validate(); err != nil {
			t.Errorf("pod %s: config does not validate: %v\n%s", podName, err, raw)
		}
		if cfg.NodeID != podName {
			t.Errorf("pod %s: node_id %q", podName, cfg.NodeID)
		}
		if cfg.KMEID != r.str(t, "kmeId") {
			t.Errorf("pod %s: kme_id %q", podName, cfg.KMEID)
		}
		// Prometheus's client certificate must carry an identity the node
		// serves /metrics to (other certificates of the CA get 403).
		for _, c := range r.certs {
			if !strings.HasSuffix(c.Name, "-metrics-client") {
				continue
			}
			ok := false
			for _, u := range c.Spec.URIs {
				ok = ok || contains(cfg.Metrics.ScrapeIdentities, u)
			}
			if !ok {
				t.Errorf("pod %s: metrics client certificate %s (URIs %v) is not in metrics.scrape_identities %v: Prometheus would get 403",
					podName, c.Name, c.Spec.URIs, cfg.Metrics.ScrapeIdentities)
			}
		}
		host, port, _ := net.SplitHostPort(cfg.Advertise)
		if host != podName+"."+domain || port != strconv.Itoa(int(nodePort)) {
			t.Errorf("pod %s: advertise %s, want %s.%s:%d (its DNS name through the headless Service)", podName, cfg.Advertise, podName, domain, nodePort)
		}
		if _, lp, _ := net.SplitHostPort(cfg.Listen); lp != strconv.Itoa(int(nodePort)) {
			t.Errorf("pod %s: listen %s is not the container port %d", podName, cfg.Listen, nodePort)
		}
		advertised = append(advertised, cfg.Advertise)
		if dv, _ := file("data_dir", cfg.DataDir+"/x"); dv.Name != "data" {
			t.Errorf("pod %s: data_dir %s is not on the data volume claim", podName, cfg.DataDir)
		}
		for what, p := range map[string]string{"tls.ca": cfg.TLS.CA, "tls.cert": cfg.TLS.Cert, "tls.key": cfg.TLS.Key, "kek_file": cfg.KEKFile} {
			if v, _ := file(what, p); v.Secret == nil {
				t.Errorf("pod %s: %s %s is not on a Secret volume", podName, what, p)
			}
		}
		if r.boolean("link.enabled") {
			if cfg.Link.PSKFile == "" {
				t.Errorf("pod %s: link enabled but no link.psk_file", podName)
			} else if v, _ := file("link.psk_file", cfg.Link.PSKFile); v.Secret == nil {
				t.Errorf("pod %s: link.psk_file is not on a Secret volume", podName)
			}
		} else if cfg.Link.PSKFile != "" {
			t.Errorf("pod %s: link off in values, on in the config", podName)
		}
		if cfg.SeedListen != "" {
			t.Errorf("pod %s: the unauthenticated seed listener is on", podName)
		}
		// Discovery: no static bootstrap map (a pod whose volume was lost
		// would found a site of its own); the SRV records of the headless
		// Service; the StatefulSet whose scale tells a scale-down.
		if len(cfg.Bootstrap) != 0 {
			t.Errorf("pod %s: a static bootstrap map %v (the nodes bootstrap through discovery)", podName, cfg.Bootstrap)
		}
		if ord, err := node.NodeOrdinal(cfg.NodeID); err != nil || ord != i {
			t.Errorf("pod %s: ordinal of node_id %q: %d, %v", podName, cfg.NodeID, ord, err)
		}
		d := cfg.Discovery
		if d.Mode != node.DiscoveryDNS || d.SRV != srv {
			t.Errorf("pod %s: discovery mode %q srv %q, want dns and %q", podName, d.Mode, d.SRV, srv)
		}
		if want := map[bool]string{true: sts.Name, false: ""}[leave]; d.StatefulSet != want {
			t.Errorf("pod %s: discovery.statefulset %q, want %q (leaveOnScaleDown %v)", podName, d.StatefulSet, want, leave)
		}
	}
	checkScaleAccess(t, r, leave)
	if len(cm.Data) != replicas {
		t.Errorf("ConfigMap %s: %d configs for %d replicas", cm.Name, len(cm.Data), replicas)
	}

	// Probes: readiness runs the binary with files that are mounted and
	// the node's port; liveness opens the port.
	rp, lp := c.ReadinessProbe, c.LivenessProbe
	if rp == nil || rp.Exec == nil || lp == nil || lp.TCPSocket == nil {
		t.Fatalf("probes: readiness %+v liveness %+v", rp, lp)
	}
	if !portOK(lp.TCPSocket.Port) {
		t.Errorf("liveness port %s is no container port", lp.TCPSocket.Port.String())
	}
	cmd := rp.Exec.Command
	if len(cmd) < 2 || cmd[0] != "/qkdkms" || cmd[1] != "servers" {
		t.Errorf("readiness command %v", cmd)
	}
	for i, a := range cmd {
		if i == 0 || i+1 >= len(cmd) {
			continue
		}
		switch a {
		case "--ca", "--cert", "--key":
			file("readiness "+a, cmd[i+1])
		case "--server":
			if _, p, _ := net.SplitHostPort(cmd[i+1]); p != strconv.Itoa(int(nodePort)) {
				t.Errorf("readiness --server %s is not the node's port", cmd[i+1])
			}
		case "--timeout":
			if d := strings.TrimSuffix(cmd[i+1], "s"); d == "" || mustAtoi(t, d) >= int(rp.TimeoutSeconds) {
				t.Errorf("readiness --timeout %s is not below timeoutSeconds %d", cmd[i+1], rp.TimeoutSeconds)
			}
		}
	}

	// NetworkPolicies select the pods and name existing ports.
	for _, np := range r.netpols {
		if !selects(t, "NetworkPolicy "+np.Name, &np.Spec.PodSelector, pod.Labels) {
			t.Errorf("NetworkPolicy %s does not select the pods", np.Name)
		}
		for _, in := range np.Spec.Ingress {
			if len(in.From) == 0 {
				t.Errorf("NetworkPolicy %s: a rule open to everyone", np.Name)
			}
			for _, p := range in.Ports {
				if p.Port == nil || !portOK(*p.Port) {
					t.Errorf("NetworkPolicy %s: port %v is no container port", np.Name, p.Port)
				}
			}
		}
	}
	if r.boolean("networkPolicy.enabled") && len(r.netpols) == 0 {
		t.Error("networkPolicy.enabled rendered no NetworkPolicy")
	}

	// ServiceMonitor: selects a Service and one of its ports; its TLS
	// client Secret exists.
	for _, sm := range r.monitors {
		var svc *corev1.Service
		for _, s := range r.services {
			if selects(t, "ServiceMonitor "+sm.Name, &sm.Spec.Selector, s.Labels) {
				svc = s
			}
		}
		if svc == nil {
			t.Errorf("ServiceMonitor %s selects no rendered Service", sm.Name)
			continue
		}
		for _, ep := range sm.Spec.Endpoints {
			found := false
			for _, p := range svc.Spec.Ports {
				found = found || p.Name == ep.Port
			}
			if !found {
				t.Errorf("ServiceMonitor %s: port %q is not a port of Service %s", sm.Name, ep.Port, svc.Name)
			}
			if ep.TLSConfig == nil || ep.TLSConfig.Cert.Secret == nil || ep.TLSConfig.KeySecret == nil || ep.TLSConfig.CA.Secret == nil {
				t.Errorf("ServiceMonitor %s: /metrics needs a client certificate", sm.Name)
				continue
			}
			r.checkSecret(t, "ServiceMonitor ca", ep.TLSConfig.CA.Secret.Name, ep.TLSConfig.CA.Secret.Key)
			r.checkSecret(t, "ServiceMonitor cert", ep.TLSConfig.Cert.Secret.Name, ep.TLSConfig.Cert.Secret.Key)
			r.checkSecret(t, "ServiceMonitor key", ep.TLSConfig.KeySecret.Name, ep.TLSConfig.KeySecret.Key)
			if sn := ep.TLSConfig.ServerName; sn == nil || !r.certCovers(*sn) {
				t.Errorf("ServiceMonitor %s: serverName %v is not a name of the node certificate", sm.Name, sn)
			}
		}
	}

	// cert-manager: the node certificate covers every advertised name,
	// the ETSI Service and the readiness probe's 127.0.0.1, and carries
	// the site's kme: identity.
	if r.boolean("tls.certManager.enabled") {
		nodeCert := r.nodeCert()
		if nodeCert == nil {
			t.Fatal("tls.certManager.enabled but no Certificate writes tls.secretName")
		}
		for _, a := range advertised {
			h, _, _ := net.SplitHostPort(a)
			if !r.certCovers(h) {
				t.Errorf("node certificate does not cover the advertised name %s", h)
			}
		}
		for _, s := range r.services {
			if s.Name != headless.Name && !r.certCovers(fmt.Sprintf("%s.%s.svc", s.Name, r.namespace)) {
				t.Errorf("node certificate does not cover Service %s", s.Name)
			}
		}
		if !r.certCovers("127.0.0.1") {
			t.Error("node certificate lacks 127.0.0.1, which the readiness probe dials")
		}
		want := "kme:" + r.str(t, "kmeId")
		if !contains(nodeCert.Spec.URIs, want) {
			t.Errorf("node certificate URIs %v lack %s", nodeCert.Spec.URIs, want)
		}
		for _, u := range []cmv1.KeyUsage{cmv1.UsageServerAuth, cmv1.UsageClientAuth} {
			if !contains(nodeCert.Spec.Usages, u) {
				t.Errorf("node certificate usages %v lack %s", nodeCert.Spec.Usages, u)
			}
		}
		for _, c := range r.certs {
			if c.Spec.IssuerRef.Name == "" {
				t.Errorf("Certificate %s has no issuer", c.Name)
			}
		}
	}
	return advertised
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}

func contains[T comparable](xs []T, x T) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func (r *rendered) nodeCert() *cmv1.Certificate {
	for _, c := range r.certs {
		if c.Spec.SecretName == r.values["tls"].(map[string]any)["secretName"] {
			return c
		}
	}
	return nil
}

// certCovers matches a host name or IP against the node Certificate's
// names as a TLS client would (one wildcard label on the left).
func (r *rendered) certCovers(host string) bool {
	c := r.nodeCert()
	if c == nil {
		return false
	}
	if net.ParseIP(host) != nil {
		return contains(c.Spec.IPAddresses, host)
	}
	for _, n := range c.Spec.DNSNames {
		if n == host {
			return true
		}
		if rest, ok := strings.CutPrefix(n, "*."); ok {
			if _, tail, ok := strings.Cut(host, "."); ok && tail == rest {
				return true
			}
		}
	}
	return false
}

func TestChartDefaultValues(t *testing.T) {
	r := render(t, "qkd", "default")
	adv := checkRelease(t, r)
	if len(adv) != 3 {
		t.Errorf("%d nodes by default, want 3", len(adv))
	}
	if len(r.netpols) != 0 || len(r.monitors) != 0 || len(r.certs) != 0 {
		t.Errorf("defaults rendered optional objects: %d NetworkPolicies, %d ServiceMonitors, %d Certificates",
			len(r.netpols), len(r.monitors), len(r.certs))
	}
}

// TestChartTwoSites renders the two-site example and checks that each
// site's peers are the other's advertised node addresses.
func TestChartTwoSites(t *testing.T) {
	ex := filepath.Join(chartDir, "examples")
	sender := render(t, "sender", "qkd-sender", filepath.Join(ex, "sender_app.yaml"))
	receiver := render(t, "receiver", "qkd-receiver", filepath.Join(ex, "receiver_app.yaml"))
	advS, advR := checkRelease(t, sender), checkRelease(t, receiver)
	peersOf := func(r *rendered, kme string) []string {
		raw := r.configMaps[r.sts[0].Name+"-config"].Data[r.sts[0].Name+"-0.json"]
		cfg, err := node.ParseConfig([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		return cfg.Peers[kme]
	}
	if got := peersOf(sender, "receiver_app"); !reflect.DeepEqual(got, advR) {
		t.Errorf("sender_app's peers %v are not receiver_app's nodes %v", got, advR)
	}
	if got := peersOf(receiver, "sender_app"); !reflect.DeepEqual(got, advS) {
		t.Errorf("receiver_app's peers %v are not sender_app's nodes %v", got, advS)
	}
	for _, r := range []*rendered{sender, receiver} {
		if len(r.netpols) < 3 || len(r.monitors) != 1 || len(r.certs) != 3 {
			t.Errorf("%s: %d NetworkPolicies, %d ServiceMonitors, %d Certificates; the example turns them all on",
				r.name, len(r.netpols), len(r.monitors), len(r.certs))
		}
		if r.str(t, "link.psk.secretName") == "" || !r.boolean("link.enabled") {
			t.Errorf("%s: the example runs the QKD link", r.name)
		}
	}
	// The peer-site policy of each site admits the other site's pods.
	admits := func(r, peer *rendered) bool {
		for _, np := range r.netpols {
			for _, in := range np.Spec.Ingress {
				for _, from := range in.From {
					if from.PodSelector == nil || from.NamespaceSelector == nil {
						continue
					}
					ns := labels.Set{"kubernetes.io/metadata.name": peer.namespace}
					s1, _ := metav1.LabelSelectorAsSelector(from.NamespaceSelector)
					s2, _ := metav1.LabelSelectorAsSelector(from.PodSelector)
					if s1.Matches(ns) && s2.Matches(labels.Set(peer.sts[0].Spec.Template.Labels)) {
						return true
					}
				}
			}
		}
		return false
	}
	if !admits(sender, receiver) || !admits(receiver, sender) {
		t.Error("the sites' NetworkPolicies do not admit each other's nodes")
	}
}

// TestChartScaled: five replicas are five nodes that discover each other;
// with leaveOnScaleDown off the pods get no API access and the NOTES say
// how to remove a node before scaling down.
func TestChartScaled(t *testing.T) {
	tests := []struct {
		name, values string
		notes        string
	}{
		{"leave on scale-down", "replicas: 5\n", "pods scaled away leave the site at SIGTERM"},
		{"manual removal", "replicas: 5\ndiscovery:\n  leaveOnScaleDown: false\n", "remove --id qkd-qkdkms-4"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "values.yaml")
			writeFile(t, f, tc.values)
			r := render(t, "qkd", "kms", f)
			if adv := checkRelease(t, r); len(adv) != 5 {
				t.Fatalf("%d nodes", len(adv))
			}
			if !strings.Contains(r.notes, tc.notes) {
				t.Errorf("NOTES do not say %q:\n%s", tc.notes, r.notes)
			}
		})
	}
}

// checkScaleAccess: with leaveOnScaleDown the pods run as a ServiceAccount
// with its token mounted, bound to a Role that grants exactly get on this
// StatefulSet's scale; without, no token and no Role.
func checkScaleAccess(t *testing.T, r *rendered, leave bool) {
	t.Helper()
	sts := r.sts[0]
	spec := sts.Spec.Template.Spec
	if r.serviceAccounts[spec.ServiceAccountName] == nil {
		t.Errorf("pod ServiceAccount %q not rendered", spec.ServiceAccountName)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken != leave {
		t.Errorf("automountServiceAccountToken %v, want %v", spec.AutomountServiceAccountToken, leave)
	}
	if !leave {
		if len(r.roles) != 0 || len(r.roleBindings) != 0 {
			t.Errorf("leaveOnScaleDown off, but %d Roles and %d RoleBindings", len(r.roles), len(r.roleBindings))
		}
		return
	}
	granted := false
	for _, b := range r.roleBindings {
		role := r.roles[b.RoleRef.Name]
		if b.RoleRef.Kind != "Role" || role == nil {
			t.Errorf("RoleBinding %s: refers to %s %s, not rendered", b.Name, b.RoleRef.Kind, b.RoleRef.Name)
			continue
		}
		bound := false
		for _, s := range b.Subjects {
			bound = bound || (s.Kind == "ServiceAccount" && s.Name == spec.ServiceAccountName && s.Namespace == r.namespace)
		}
		if !bound {
			continue
		}
		for _, rule := range role.Rules {
			if len(rule.Verbs) != 1 || rule.Verbs[0] != "get" || len(rule.ResourceNames) != 1 || rule.ResourceNames[0] != sts.Name {
				t.Errorf("Role %s: rule %+v grants more than get on statefulsets/scale of %s", role.Name, rule, sts.Name)
				continue
			}
			if slices.Equal(rule.APIGroups, []string{"apps"}) && slices.Equal(rule.Resources, []string{"statefulsets/scale"}) {
				granted = true
			}
		}
	}
	if !granted {
		t.Errorf("ServiceAccount %s may not get the scale of StatefulSet %s: a pod scaled away could not tell and would not leave", spec.ServiceAccountName, sts.Name)
	}
}

// TestChartRefusesBadValues: values the server would refuse fail at render.
func TestChartRefusesBadValues(t *testing.T) {
	dir := t.TempDir()
	for name, vals := range map[string]string{
		"link without peers": "link:\n  enabled: true\n",
		"peer is self":       "kmeId: a\npeers:\n  a: [\"x:1\"]\n",
		"bad kme id":         "kmeId: \"a:b\"\n",
		"no replicas":        "replicas: 0\n",
		"anti-affinity typo": "antiAffinity: hrad\n",
		"static bootstrap":   "bootstrapReplicas: 3\n",
	} {
		f := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".yaml")
		writeFile(t, f, vals)
		if _, _, err := renderChart("qkd", "kms", f); err == nil {
			t.Errorf("%s: rendered", name)
		}
	}
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
