import Foundation
import ParleyCrypto
import ParleyProtocol

/// Who this client is: the account, its session, and its private key. Never log it:
/// `description` leaves out the session, the passkey and the key.
public struct Identity: Sendable, CustomStringConvertible {
    public var userID: ID
    public var username: String
    /// The session token (`auth` on reconnect).
    public var session: String
    /// Shown once at signup; needed for `login` when the session has expired.
    public var passkey: String?
    public var privateKey: RSAPrivateKey

    public init(userID: ID, username: String, session: String, passkey: String?, privateKey: RSAPrivateKey) {
        self.userID = userID
        self.username = username
        self.session = session
        self.passkey = passkey
        self.privateKey = privateKey
    }

    /// base64 SHA-256 of this account's SPKI.
    public var fingerprint: String { privateKey.publicKey.fingerprintBase64 }

    public var description: String { "Identity(\(username), \(userID), key \(fingerprint))" }
}

/// The identity file: JSON with the user id, username, session, passkey and the private
/// key as PKCS#8 PEM (encrypted with a passphrase when one is given), mode 0600. Pinned
/// keys live beside it (`pinsURL(for:)`), also 0600.
public enum IdentityFile {
    private struct Contents: Codable {
        var version: Int
        var user_id: String
        var username: String
        var session: String
        var passkey: String?
        var private_key: String
    }

    /// Writes `identity` to `url` (created 0600, replaced atomically).
    public static func write(_ identity: Identity, to url: URL, passphrase: String? = nil) throws {
        let pem: String
        do {
            pem = try identity.privateKey.pkcs8PEM(passphrase: passphrase)
        } catch {
            throw ClientError.crypto("cannot encode the private key: \(error)")
        }
        let contents = Contents(
            version: 1, user_id: identity.userID.string, username: identity.username,
            session: identity.session, passkey: identity.passkey, private_key: pem)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        try SecureFile.write(Array(try encoder.encode(contents)), to: url)
    }

    /// Reads an identity file. Refuses one that other users may read or write (like ssh),
    /// and throws `ClientError.crypto` for a wrong or missing passphrase.
    public static func read(from url: URL, passphrase: String? = nil) throws -> Identity {
        let mode = try SecureFile.mode(of: url)
        guard mode & 0o077 == 0 else {
            throw ClientError.file("\(url.lastPathComponent) is accessible to other users (mode \(String(mode, radix: 8))); use 0600")
        }
        let contents: Contents
        do {
            contents = try JSONDecoder().decode(Contents.self, from: Data(SecureFile.read(url)))
        } catch let error as ClientError {
            throw error
        } catch {
            throw ClientError.file("\(url.lastPathComponent) is not an identity file")
        }
        guard contents.version == 1, let userID = ID(contents.user_id) else {
            throw ClientError.file("\(url.lastPathComponent) is not an identity file of version 1")
        }
        let key: RSAPrivateKey
        do {
            key = try RSAPrivateKey(pkcs8PEM: contents.private_key, passphrase: passphrase)
        } catch let error as CryptoError {
            throw ClientError.crypto(error.description)
        }
        return Identity(
            userID: userID, username: contents.username, session: contents.session,
            passkey: contents.passkey, privateKey: key)
    }

    /// The pin file beside an identity file: `<name>.pins.json`.
    public static func pinsURL(for identityURL: URL) -> URL {
        identityURL.deletingLastPathComponent()
            .appendingPathComponent(identityURL.lastPathComponent + ".pins.json")
    }
}
