// EchoBot: the smallest useful bot on the ParleyClient SDK (see docs/bots.md).
// usage: parley-example-bot <ws://host:port/ws> <username> [identity file]
// Signs up on first run (keeping the identity file, mode 0600, and the pinned keys beside
// it), follows every channel it is in or is added to, and answers `!echo <text>`.
import Foundation
import ParleyClient
import ParleyCrypto
import ParleyProtocol

let arguments = CommandLine.arguments
guard arguments.count >= 3, let server = URL(string: arguments[1]) else {
    FileHandle.standardError.write(Data("usage: parley-example-bot <ws://host:port/ws> <username> [identity file]\n".utf8))
    exit(64)
}
let username = arguments[2]
let identityURL = URL(fileURLWithPath: arguments.count > 3 ? arguments[3] : "\(username).identity.json")

do {
    // 1. A client whose pinned keys persist beside the identity file.
    var configuration = ClientConfiguration()
    configuration.pins = try KeyPinStore(file: IdentityFile.pinsURL(for: identityURL))
    let client = ParleyClient(url: server, configuration: configuration)

    // 2. Sign in: the stored session, or a new account on first run.
    let me: Identity
    if FileManager.default.fileExists(atPath: identityURL.path) {
        me = try await client.auth(identity: try IdentityFile.read(from: identityURL))
    } else {
        me = try await client.signup(username: username, key: try RSAPrivateKey(generating: .bits2048))
        try IdentityFile.write(me, to: identityURL)   // holds the passkey: never print it
    }
    print("signed in as \(me.username), key fingerprint \(me.fingerprint)")

    // 3. Follow every channel we are in now (from now on: no replies to old messages).
    let channels = try await client.channels()
    if !channels.isEmpty { try await client.subscribe(to: channels.map(\.channelID)) }

    // 4. React to events: messages arrive decrypted and signature-checked.
    for await event in client.events {
        switch event {
        case .membership(let channelID, let userID, .added, _) where userID == me.userID:
            try await client.subscribe(to: [channelID])          // added while running
        case .message(let message) where message.senderID != me.userID:
            guard let text = message.text else {                  // .unverifiable: never trust it
                print("refused message #\(message.seq): \(message.content)")
                continue
            }
            if text.hasPrefix("!echo ") {
                try await client.send(text: String(text.dropFirst(6)), to: message.channelID)
            }
        case .securityAlert(let alert):
            print("SECURITY ALERT: \(alert)")
        default:
            break
        }
    }
} catch {
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))   // ClientError descriptions hold no secrets
    exit(1)
}
