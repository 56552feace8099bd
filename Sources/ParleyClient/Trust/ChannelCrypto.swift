import ParleyCrypto
import ParleyProtocol

/// A channel key this client accepted: checked as §6 asks, or made by this client.
struct ChannelKey: Sendable {
    var keyID: ID
    var channelID: ID
    var creatorID: ID
    var membershipVersion: Int
    var key: SymmetricKey
    /// Unix milliseconds; when the relay stops accepting messages under this key.
    var expiresAt: Int
}

/// The pure cryptography of channel keys and messages (§6, §7), separate from the I/O.
enum ChannelCrypto {
    // MARK: Key records

    /// A fresh key record for exactly `recipients` (the members of `membershipVersion`),
    /// signed by `creator`.
    static func makeKeyRecord(
        channelID: ID, previousKeyID: ID?, membershipVersion: Int,
        recipients: [(userID: ID, publicKey: RSAPublicKey)], creator: RSAPrivateKey
    ) throws -> (request: Request.Keys, key: SymmetricKey) {
        let key = try SymmetricKey.generate()
        let keyID = ID.random()
        let digest = SHA256.hash(key.bytes)
        var request = Request.Keys(
            channelID: channelID, keyID: keyID, previousKeyID: previousKeyID, membershipVersion: membershipVersion,
            digest: digest, sig: [], encryptedKeys: [])
        request.sig = try creator.signature(for: request.signedText)
        request.encryptedKeys = try recipients.map { recipient in
            WrappedKey(userID: recipient.userID, encryptedKey: try recipient.publicKey.wrap(key.bytes))
        }
        return (request, key)
    }

    /// Accepts a key record only if the creator's signature verifies with its pinned key,
    /// the creator is a member of that membership version in the verified chain, and the
    /// unwrapped key hashes to the digest.
    static func checkKeyRecord(
        _ record: KeyRecord, chain: MembershipChain, creatorKey: RSAPublicKey, recipient: RSAPrivateKey
    ) throws(VerificationFailure) -> ChannelKey {
        func refuse(_ why: String) -> VerificationFailure {
            VerificationFailure(.keyRecord, channelID: record.channelID, "key \(record.keyID): \(why)")
        }
        guard record.channelID == chain.channelID else { throw refuse("belongs to another channel") }
        guard let statement = chain.statement(version: record.membershipVersion) else {
            throw refuse("names membership version \(record.membershipVersion), which is not verified")
        }
        guard statement.members.contains(record.creatorID) else {
            throw refuse("its creator is not a member of membership version \(record.membershipVersion)")
        }
        guard creatorKey.isValidSignature(record.sig, for: record.signedText) else {
            throw refuse("the creator's signature does not verify")
        }
        guard let wrapped = record.encryptedKey else { throw refuse("holds no copy for this user") }
        let raw: [UInt8]
        do {
            raw = try recipient.unwrap(wrapped)
        } catch {
            throw refuse("the wrapped key does not unwrap")
        }
        guard raw.count == SymmetricKey.byteCount, ConstantTime.equals(SHA256.hash(raw), record.digest),
              let key = try? SymmetricKey(bytes: raw) else {
            throw refuse("the unwrapped key does not match its digest")
        }
        return ChannelKey(
            keyID: record.keyID, channelID: record.channelID, creatorID: record.creatorID,
            membershipVersion: record.membershipVersion, key: key, expiresAt: record.expiresAt)
    }

    // MARK: Messages

    /// `{"body","sig"}` sealed with the channel key; `sig` signs `${body}:${channel_id}:${ts}`.
    static func seal(text: String, channelID: ID, ts: Int, key: SymmetricKey, signer: RSAPrivateKey) throws -> AESGCM.SealedBox {
        let sig = try signer.signature(for: SignedText.message(body: text, channelID: channelID, ts: ts))
        return try AESGCM.seal(MessagePlaintext(body: text, sig: sig).encode(), using: key)
    }

    /// Decrypts and verifies one stored message with its (already checked) key and the
    /// sender's pinned key. Any failure is `.unverifiable`, never the sender's text.
    static func open(_ record: MessageRecord, key: SymmetricKey, senderKey: RSAPublicKey) -> DecryptedMessage.Content {
        let plaintext: [UInt8]
        do {
            plaintext = try AESGCM.open(AESGCM.SealedBox(iv: record.iv, ciphertext: record.ciphertext), using: key)
        } catch {
            return .unverifiable(reason: "does not decrypt with its key")
        }
        let message: MessagePlaintext
        do {
            message = try MessagePlaintext.decode(plaintext)
        } catch {
            return .unverifiable(reason: "the plaintext is not {\"body\",\"sig\"}")
        }
        let signed = SignedText.message(body: message.body, channelID: record.channelID, ts: record.ts)
        guard senderKey.isValidSignature(message.sig, for: signed) else {
            return .unverifiable(reason: "the sender's signature does not verify")
        }
        return .text(message.body)
    }
}
