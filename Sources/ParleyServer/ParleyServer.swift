import CLibWebSockets
import CLibPQ
import COpenSSL
// Placeholder until the relay issue: proves the three C modules import and link.
enum LinkCheck {
    static func versions() -> [String] {
        [String(cString: lws_get_library_version()), "libpq \(PQlibVersion())", String(cString: OpenSSL_version(OPENSSL_VERSION))]
    }
}
