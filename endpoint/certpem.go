package endpoint

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
)

// EncodeCertificatePEM returns cert's chain as "CERTIFICATE" blocks and its
// private key as a PKCS #8 "PRIVATE KEY" block: the contents of a
// cert_file and its key_file.
func EncodeCertificatePEM(cert tls.Certificate) (chain, key []byte, err error) {
	if len(cert.Certificate) == 0 {
		return nil, nil, errors.New("empty certificate chain")
	}
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return nil, nil, err
	}
	return chain, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}
