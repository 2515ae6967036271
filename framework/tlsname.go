package framework

import "crypto/tls"

// TLSVersionName names a TLS version as OpenSSL and mod_ssl do
// ("TLSv1.2", "TLSv1.3"), the names exec's SSL_PROTOCOL and the access log
// use.
func TLSVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "TLSv1"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return tls.VersionName(v)
}
