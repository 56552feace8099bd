import Foundation

/// Files holding secrets: created with mode 0600 from the start (never written and then
/// chmod-ed), filled, flushed, and renamed over the target, so a reader sees the old file
/// or the new one and no other user ever sees either.
enum SecureFile {
    /// Writes `bytes` to `url` atomically with mode 0600.
    static func write(_ bytes: [UInt8], to url: URL) throws {
        let folder = url.deletingLastPathComponent()
        let suffix = (0..<8).map { _ in String(UInt8.random(in: 0...255), radix: 16) }.joined()
        let temporary = folder.appendingPathComponent(".\(url.lastPathComponent).\(suffix).tmp")
        let fd = retryingEINTR { open(temporary.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600) }
        guard fd >= 0 else { throw failure("open", temporary) }
        var renamed = false
        defer { if !renamed { unlink(temporary.path) } }
        do {
            defer { close(fd) }
            // The umask can only take bits away from 0600; make it exactly 0600 before any
            // secret is written, so the owner can always read it back.
            guard fchmod(fd, 0o600) == 0 else { throw failure("fchmod", temporary) }
            var offset = 0
            while offset < bytes.count {
                let written = bytes[offset...].withUnsafeBytes { buffer in
                    retryingEINTR { Foundation.write(fd, buffer.baseAddress, buffer.count) }
                }
                guard written > 0 else { throw failure("write", temporary) }
                offset += written
            }
            guard retryingEINTR({ fsync(fd) }) == 0 else { throw failure("fsync", temporary) }
        }
        guard rename(temporary.path, url.path) == 0 else { throw failure("rename", url) }
        renamed = true
    }

    /// Reads the whole file.
    static func read(_ url: URL) throws -> [UInt8] {
        do {
            return Array(try Data(contentsOf: url))
        } catch {
            throw ClientError.file("cannot read \(url.lastPathComponent)")
        }
    }

    /// The permission bits of `url` (e.g. 0o600).
    static func mode(of url: URL) throws -> mode_t {
        var info = stat()
        guard stat(url.path, &info) == 0 else { throw failure("stat", url) }
        return info.st_mode & 0o7777
    }

    private static func retryingEINTR<T: BinaryInteger>(_ call: () -> T) -> T {
        while true {
            let result = call()
            if result < 0 && errno == EINTR { continue }
            return result
        }
    }

    private static func failure(_ call: String, _ url: URL) -> ClientError {
        ClientError.file("\(call) \(url.lastPathComponent): \(String(cString: strerror(errno)))")
    }
}
