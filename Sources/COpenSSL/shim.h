#ifndef PARLEY_COPENSSL_SHIM_H
#define PARLEY_COPENSSL_SHIM_H
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/pem.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include <openssl/x509.h>
#include <openssl/bio.h>

// OPENSSL_free is a macro (it passes __FILE__/__LINE__); Swift cannot call macros.
static inline void parley_openssl_free(void *pointer) { OPENSSL_free(pointer); }
// OPENSSL_malloc is a macro too; EVP_PKEY_CTX_set0_rsa_oaep_label takes ownership of a buffer that must come from it.
static inline void *parley_openssl_malloc(size_t size) { return OPENSSL_malloc(size); }

#endif
