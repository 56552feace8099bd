import Foundation

/// The web client's files (`web/` of the repository), read into memory when the relay
/// starts and served at `/` by the service thread, which must never wait on a disk.
///
/// Only what was found under the folder at start can be served: a request names a key of
/// this table or gets 404, so no path (`..`, encoded or not, symlinks out of the folder)
/// reaches the file system. Every file goes out with the page's security headers (every
/// other HTTP answer of the relay still carries `nosniff`).
struct WebFiles: Sendable {
    struct File: Sendable {
        var body: [UInt8]
        var contentType: String
    }

    /// Request path (`/`, `/js/app.js`) → file.
    private(set) var files: [String: File] = [:]

    /// At most this many files and bytes are read (a misconfigured folder, say `/`, is
    /// refused rather than read whole).
    static let maxFiles = 512
    static let maxBytes = 16 << 20

    static let contentTypes: [String: String] = [
        "html": "text/html; charset=utf-8",
        "js": "text/javascript; charset=utf-8",
        "mjs": "text/javascript; charset=utf-8",
        "css": "text/css; charset=utf-8",
        "json": "application/json",
        "svg": "image/svg+xml",
        "png": "image/png",
        "ico": "image/x-icon",
        "txt": "text/plain; charset=utf-8",
        "webmanifest": "application/manifest+json",
    ]

    /// The page may run only its own scripts and styles, talk only to its own origin
    /// (the relay's `/ws`), and be framed by nobody.
    static let securityHeaders: [(String, String)] = [
        ("content-security-policy",
         "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            + "manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
        // The page changes with the relay's version: always revalidate.
        ("cache-control", "no-cache"),
    ]

    init() {}

    /// Reads every file of known type under `folder` (hidden files and other types are
    /// left out). Throws when the folder cannot be read or is too large.
    init(folder: URL) throws {
        let root = folder.resolvingSymlinksInPath().standardizedFileURL
        guard let walker = FileManager.default.enumerator(
            at: root, includingPropertiesForKeys: [.isRegularFileKey], options: [.skipsHiddenFiles])
        else {
            throw WebFilesError(message: "cannot read the web folder \(root.path)")
        }
        var total = 0
        for case let url as URL in walker {
            let file = url.resolvingSymlinksInPath().standardizedFileURL
            guard (try? file.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true,
                  let type = Self.contentTypes[file.pathExtension.lowercased()],
                  file.path.hasPrefix(root.path + "/") else { continue }
            let body = try [UInt8](Data(contentsOf: file))
            total += body.count
            guard files.count < Self.maxFiles, total <= Self.maxBytes else {
                throw WebFilesError(message: "the web folder \(root.path) holds more than \(Self.maxFiles) files or \(Self.maxBytes >> 20) MiB")
            }
            let path = String(file.path.dropFirst(root.path.count))
            files[path] = File(body: body, contentType: type)
        }
        if let index = files["/index.html"] { files["/"] = index }
    }

    /// The file a request path names (its query string ignored), if any.
    func file(for requestPath: String) -> File? {
        let path = requestPath.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        return files[path]
    }

    var isEmpty: Bool { files.isEmpty }
}

struct WebFilesError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}
