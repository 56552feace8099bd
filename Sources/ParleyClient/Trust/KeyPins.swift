import Foundation
import ParleyCrypto
import ParleyProtocol

/// Trust on first sight: each user's public key is pinned the first time it is seen, and
/// a different key for that user later is refused. A value type, pure; `KeyPinStore`
/// adds a lock and a file.
public struct KeyPins: Sendable, Equatable {
    /// One pinned key.
    public struct Pin: Sendable, Equatable, Codable {
        /// base64 SHA-256 of the SPKI DER.
        public var fingerprint: String
        /// The SPKI DER, base64, so a pinned key can be used without asking the relay.
        public var publicKey: String

        public init(publicKey spki: [UInt8]) {
            fingerprint = KeyPins.fingerprint(of: spki)
            publicKey = Base64.encode(spki)
        }
    }

    /// What `check` found.
    public enum Outcome: Sendable, Equatable {
        /// Never seen: pinned now.
        case pinned
        /// The pinned key.
        case matches
        /// Another key than the pinned one: refuse it.
        case changed(pinned: String, presented: String)
    }

    public private(set) var pins: [ID: Pin] = [:]

    public init() {}

    /// base64 SHA-256 of an SPKI DER: what clients pin and show.
    public static func fingerprint(of spki: [UInt8]) -> String {
        Base64.encode(SHA256.hash(spki))
    }

    /// Compares `spki` with the pin of `userID`, pinning it when there is none. A changed
    /// key leaves the pin as it was.
    public mutating func check(userID: ID, publicKey spki: [UInt8]) -> Outcome {
        let presented = Pin(publicKey: spki)
        guard let pinned = pins[userID] else {
            pins[userID] = presented
            return .pinned
        }
        // Fingerprints are public values, but compare in constant time all the same.
        guard ConstantTime.equals(Array(pinned.fingerprint.utf8), Array(presented.fingerprint.utf8)) else {
            return .changed(pinned: pinned.fingerprint, presented: presented.fingerprint)
        }
        return .matches
    }

    /// The pin of `userID`.
    public func pin(for userID: ID) -> Pin? { pins[userID] }

    /// Forgets a pin: only for a key change the user confirmed out of band.
    public mutating func forget(_ userID: ID) { pins.removeValue(forKey: userID) }

    // MARK: File format: {"version":1,"pins":{"<user id>":{"fingerprint","public_key"}}}

    private struct File: Codable {
        var version: Int
        var pins: [String: Entry]
    }

    private struct Entry: Codable {
        var fingerprint: String
        var public_key: String
    }

    /// The pins as JSON.
    public func encoded() throws -> [UInt8] {
        var entries: [String: Entry] = [:]
        for (user, pin) in pins { entries[user.string] = Entry(fingerprint: pin.fingerprint, public_key: pin.publicKey) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return Array(try encoder.encode(File(version: 1, pins: entries)))
    }

    /// Reads pins written by `encoded()`; each fingerprint must match its key.
    public init(encoded bytes: [UInt8]) throws {
        let file: File
        do {
            file = try JSONDecoder().decode(File.self, from: Data(bytes))
        } catch {
            throw ClientError.file("the pin file is not valid JSON of the expected shape")
        }
        guard file.version == 1 else { throw ClientError.file("unknown pin file version \(file.version)") }
        for (user, entry) in file.pins {
            guard let id = ID(user), let spki = try? Base64.decode(entry.public_key),
                  KeyPins.fingerprint(of: spki) == entry.fingerprint else {
                throw ClientError.file("the pin file has a malformed entry")
            }
            pins[id] = Pin(publicKey: spki)
        }
    }
}

/// Pinned keys shared by the tasks of a client (and possibly several clients of one
/// user), optionally kept in a file (mode 0600, replaced atomically on each new pin).
/// Thread-safe: every access holds `lock`.
public final class KeyPinStore: @unchecked Sendable {
    private let lock = NSLock()
    private var pins: KeyPins      // guarded by lock
    private let file: URL?

    /// In memory only.
    public init() {
        pins = KeyPins()
        file = nil
    }

    /// Backed by `file`: read when it exists, written on every new pin. A file other
    /// users may write is refused: whoever can edit the pins can swap a key.
    public init(file: URL) throws {
        self.file = file
        if FileManager.default.fileExists(atPath: file.path) {
            let mode = try SecureFile.mode(of: file)
            guard mode & 0o022 == 0 else {
                throw ClientError.file("\(file.lastPathComponent) is writable by other users (mode \(String(mode, radix: 8))); use 0600")
            }
            pins = try KeyPins(encoded: SecureFile.read(file))
        } else {
            pins = KeyPins()
        }
    }

    /// `KeyPins.check`, saving a new pin to the file before returning.
    public func check(userID: ID, publicKey spki: [UInt8]) throws -> KeyPins.Outcome {
        try lock.withLock {
            var updated = pins
            let outcome = updated.check(userID: userID, publicKey: spki)
            if outcome == .pinned, let file {
                try SecureFile.write(updated.encoded(), to: file)
            }
            pins = updated
            return outcome
        }
    }

    /// The pin of `userID`, if any.
    public func pin(for userID: ID) -> KeyPins.Pin? {
        lock.withLock { pins.pin(for: userID) }
    }

    /// A copy of every pin.
    public var snapshot: KeyPins { lock.withLock { pins } }

    /// Forgets a pin (a key change confirmed out of band), saving the file.
    public func forget(_ userID: ID) throws {
        try lock.withLock {
            var updated = pins
            updated.forget(userID)
            if let file { try SecureFile.write(updated.encoded(), to: file) }
            pins = updated
        }
    }
}
