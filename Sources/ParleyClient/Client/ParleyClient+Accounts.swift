import Foundation
import ParleyCrypto
import ParleyProtocol

// Accounts (§4) and users: signup, login, auth, logout, user lookups with key pinning.
extension ParleyClient {
    /// Creates an account for `key` and signs in. The returned identity holds the passkey
    /// (shown once): keep it, e.g. with `IdentityFile.write`.
    public func signup(username: String, key: RSAPrivateKey) async throws -> Identity {
        let connection = try await usableTransport(.connection)
        let request = Request.signup(.init(username: username, publicKeyDER: key.publicKey.spkiDER))
        guard case .signup(let issued) = try await exchange(request, on: connection) else {
            throw ClientError.unexpectedReply("signup")
        }
        let result = try await answer(issued, with: key, on: connection)
        let identity = Identity(
            userID: result.userID, username: result.username, session: result.session, passkey: result.passkey,
            privateKey: key)
        try adopt(identity)
        return identity
    }

    /// Signs in with the passkey (a new session), proving possession of `key`.
    public func login(username: String, passkey: String, key: RSAPrivateKey) async throws -> Identity {
        let connection = try await usableTransport(.connection)
        guard case .login(let issued) = try await exchange(.login(.init(username: username, passkey: passkey)), on: connection) else {
            throw ClientError.unexpectedReply("login")
        }
        let result = try await answer(issued, with: key, on: connection)
        let identity = Identity(
            userID: result.userID, username: result.username, session: result.session, passkey: passkey,
            privateKey: key)
        try adopt(identity)
        return identity
    }

    /// Attaches an existing session (e.g. from the identity file) to the connection.
    /// `key` is the account's private key: every channel operation needs it.
    @discardableResult
    public func auth(session: String, key: RSAPrivateKey, passkey: String? = nil) async throws -> Identity {
        let connection = try await usableTransport(.connection)
        let reply: Response
        do {
            reply = try await exchange(.auth(.init(session: session)), on: connection)
        } catch let error as ClientError where error.code == .authFailed {
            throw ClientError.sessionEnded
        }
        guard case .auth(let result) = reply else { throw ClientError.unexpectedReply("auth") }
        let identity = Identity(
            userID: result.userID, username: result.username, session: session, passkey: passkey, privateKey: key)
        try adopt(identity)
        return identity
    }

    /// `auth` with everything an identity file holds.
    @discardableResult
    public func auth(identity: Identity) async throws -> Identity {
        try await auth(session: identity.session, key: identity.privateKey, passkey: identity.passkey)
    }

    /// Ends the session everywhere; the client is signed out (no reconnects).
    public func logout() async throws {
        guard case .logout = try await send(.logout) else { throw ClientError.unexpectedReply("logout") }
        forgetSession()
    }

    /// The signed-in identity.
    public var currentIdentity: Identity? { identity }

    /// Decrypts the challenge (refusing anything but 32 bytes) and answers with its hash.
    private func answer(
        _ issued: Response.ChallengeIssued, with key: RSAPrivateKey, on connection: any ClientTransport
    ) async throws -> Response.Challenge {
        let answer: [UInt8]
        do {
            let secret = try key.unwrap(issued.challenge)
            answer = try Base64.decode(ChallengeAnswer.compute(secret: secret))
        } catch {
            throw ClientError.crypto("the challenge does not decrypt to 32 bytes with this key")
        }
        let request = Request.challenge(.init(challengeID: issued.challengeID, answer: answer))
        guard case .challenge(let result) = try await exchange(request, on: connection) else {
            throw ClientError.unexpectedReply("challenge")
        }
        return result
    }

    // MARK: - Users and pinned keys

    /// Looks a user up by name; its key is checked against the pins (pinned on first sight).
    public func user(named username: String) async throws -> UserInfo {
        try await lookUp(.username(username))
    }

    /// Looks a user up by id; its key is checked against the pins (pinned on first sight).
    public func user(id: ID) async throws -> UserInfo {
        try await lookUp(.userID(id))
    }

    private func lookUp(_ query: Request.User) async throws -> UserInfo {
        guard case .user(let user) = try await send(.user(query)) else { throw ClientError.unexpectedReply("user") }
        if case .userID(let asked) = query, asked != user.userID {
            throw ClientError.unexpectedReply("the relay described another user")
        }
        let key = try trust(userID: user.userID, publicKey: user.publicKey)
        return UserInfo(
            userID: user.userID, username: user.username, publicKey: user.publicKey,
            fingerprint: key.fingerprintBase64, createdAt: user.createdAt)
    }

    /// The fingerprint pinned for `userID`, if any.
    public func pinnedFingerprint(of userID: ID) -> String? {
        pins.pin(for: userID)?.fingerprint
    }

    /// Checks a public key the relay presented for `userID` against the pins: pinned on
    /// first sight, refused loudly (an alert and `.keyChanged`) when it differs.
    func trust(userID: ID, publicKey spki: [UInt8]) throws -> RSAPublicKey {
        let key: RSAPublicKey
        do {
            key = try RSAPublicKey(spkiDER: spki)
        } catch {
            throw ClientError.verification(VerificationFailure(.memberList, channelID: nil, "the public key of \(userID) is not an acceptable RSA key"))
        }
        switch try pins.check(userID: userID, publicKey: spki) {
        case .pinned, .matches:
            publicKeys[userID] = key
            return key
        case .changed(let pinned, let presented):
            alert(.keyChanged(userID: userID, pinned: pinned, presented: presented))
            throw ClientError.keyChanged(userID: userID, pinned: pinned, presented: presented)
        }
    }

    /// The pinned public key of `userID`: from memory, from the pin store, or fetched
    /// from the relay and pinned on first sight.
    func pinnedKey(_ userID: ID) async throws -> RSAPublicKey {
        if let key = publicKeys[userID] { return key }
        if let pin = pins.pin(for: userID), let spki = try? Base64.decode(pin.publicKey),
           let key = try? RSAPublicKey(spkiDER: spki) {
            publicKeys[userID] = key
            return key
        }
        _ = try await user(id: userID)
        guard let key = publicKeys[userID] else { throw ClientError.unexpectedReply("user") }
        return key
    }
}
