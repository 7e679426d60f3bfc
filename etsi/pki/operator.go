package pki

import (
	"crypto/x509"
	"net/url"
)

// operatorScheme is the URI SAN scheme of an operator (admin) certificate:
// "kme-admin:<KME ID>" lets its holder call the admin endpoints of that site.
const operatorScheme = "kme-admin"

// IssueOperator issues a client certificate for operator name, allowed to
// administer KME kmeID (join/remove nodes, list servers, import blocks).
// Its CN is "operator <name>"; it carries no sae: or kme: identity.
func (ca *CA) IssueOperator(name, kmeID string) (Leaf, error) {
	if err := checkID(name); err != nil {
		return Leaf{}, err
	}
	if err := checkID(kmeID); err != nil {
		return Leaf{}, err
	}
	tmpl := leafTemplate("operator " + name)
	tmpl.URIs = []*url.URL{{Scheme: operatorScheme, Opaque: kmeID}}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	return ca.issue(tmpl)
}

// OperatorKME returns the KME ID an operator certificate may administer
// ("" when the certificate is not an operator certificate, or carries more
// than one role identity).
func OperatorKME(cert *x509.Certificate) string {
	if ambiguous(cert) {
		return ""
	}
	for _, u := range cert.URIs {
		if u.Scheme == operatorScheme && u.Opaque != "" {
			return u.Opaque
		}
	}
	return ""
}
