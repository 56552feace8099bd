// swift-tools-version:6.0
// Parley: an end-to-end encrypted group chat relay.
// C libraries come from Debian packages through pkg-config; see scripts/setup.
import PackageDescription

let package = Package(
    name: "parley",
    products: [
        .executable(name: "parley-server", targets: ["parley-server"]),
        .executable(name: "parley-bot", targets: ["parley-bot"]),
        .executable(name: "parley", targets: ["parley"]),
        .executable(name: "parley-bench", targets: ["parley-bench"]),
        .library(name: "ParleyClient", targets: ["ParleyClient"]),
    ],
    dependencies: [
        // parley-bench only: HDR latency histograms.
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // C at the edge: a module map and a shim header each.
        .systemLibrary(
            name: "CLibWebSockets",
            pkgConfig: "libwebsockets",
            providers: [.apt(["libwebsockets-dev"])]
        ),
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),

        // Layers point one way: executables -> server/client -> store/protocol/crypto -> C.
        .target(name: "ParleyEncoding"),
        .target(name: "ParleyCrypto", dependencies: ["COpenSSL", "ParleyEncoding"]),
        .target(name: "ParleyProtocol", dependencies: ["ParleyEncoding"]),
        .target(name: "ParleyStore", dependencies: ["CLibPQ"]),
        .target(
            name: "ParleyServer",
            dependencies: ["CLibWebSockets", "ParleyStore", "ParleyProtocol", "ParleyCrypto"]
        ),
        .target(
            name: "ParleyClient",
            dependencies: ["CLibWebSockets", "ParleyProtocol", "ParleyCrypto"]
        ),

        .executableTarget(name: "parley-server", dependencies: ["ParleyServer", "ParleyStore"]),
        .executableTarget(name: "parley-bot", dependencies: ["ParleyClient"]),
        .executableTarget(name: "parley", dependencies: ["ParleyClient"]),
        .executableTarget(
            name: "parley-bench",
            dependencies: [
                "CLibWebSockets", "ParleyClient", "ParleyProtocol", "ParleyCrypto", "ParleyEncoding",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        .executableTarget(name: "parley-example-bot", dependencies: ["ParleyClient"], path: "Examples/EchoBot"),

        // Shared by the test targets: the embedded test database and its helpers.
        .target(name: "ParleyTestSupport", dependencies: ["ParleyStore"], path: "Tests/ParleyTestSupport"),
        .testTarget(name: "ParleyEncodingTests", dependencies: ["ParleyEncoding"]),
        .testTarget(name: "ParleyCryptoTests", dependencies: ["ParleyCrypto"]),
        .testTarget(name: "ParleyProtocolTests", dependencies: ["ParleyProtocol", "ParleyEncoding", "ParleyCrypto"]),
        .testTarget(name: "ParleyStoreTests", dependencies: ["ParleyStore", "ParleyTestSupport"]),
        .testTarget(
            name: "ParleyClientTests",
            dependencies: ["ParleyClient", "ParleyServer", "ParleyStore", "ParleyProtocol", "ParleyCrypto", "ParleyTestSupport"]
        ),
        .testTarget(
            name: "ParleyServerTests",
            dependencies: ["ParleyServer", "ParleyStore", "ParleyProtocol", "ParleyCrypto", "ParleyTestSupport"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
