// A Java JSSE mutual-TLS handshake from keystore and truststore files only (issue 23): run with
// the JDK's source launcher, `java e2e/java/JsseHandshake.java GROUP...`, where each GROUP is five
// arguments
//
//   SERVER_KEYSTORE SERVER_TRUSTSTORE CLIENT_KEYSTORE CLIENT_TRUSTSTORE HOST
//
// and each store is `path:password` (type from the extension: .p12 PKCS12, .jks JKS). For each
// group a server on 127.0.0.1 requires a client certificate; the client verifies the server's
// name against HOST (endpoint identification "HTTPS", as HttpsURLConnection does) and sends SNI.
// Prints one line per group: `ok server=<SAN URI> client=<SAN URI the server saw>` or
// `fail <exception>`; exits 2 on bad usage only.
import java.io.*;
import java.net.*;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.cert.X509Certificate;
import java.util.*;
import javax.net.ssl.*;

public class JsseHandshake {
    static KeyStore load(String spec) throws Exception {
        int i = spec.lastIndexOf(':');
        String path = spec.substring(0, i);
        char[] password = spec.substring(i + 1).toCharArray();
        KeyStore ks = KeyStore.getInstance(path.endsWith(".jks") ? "JKS" : "PKCS12");
        try (InputStream in = new FileInputStream(path)) {
            ks.load(in, password);
        }
        return ks;
    }

    static char[] password(String spec) {
        return spec.substring(spec.lastIndexOf(':') + 1).toCharArray();
    }

    static SSLContext context(String keystore, String truststore) throws Exception {
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(load(keystore), password(keystore));
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(load(truststore));
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kmf.getKeyManagers(), tmf.getTrustManagers(), null);
        return ctx;
    }

    static String uri(X509Certificate cert) throws Exception {
        if (cert.getSubjectAlternativeNames() != null) {
            for (List<?> san : cert.getSubjectAlternativeNames()) {
                if ((Integer) san.get(0) == 6) {
                    return (String) san.get(1);
                }
            }
        }
        return "none";
    }

    static String handshake(String sks, String sts, String cks, String cts, String host) throws Exception {
        SSLServerSocket server = (SSLServerSocket) context(sks, sts).getServerSocketFactory()
                .createServerSocket(0, 1, InetAddress.getLoopbackAddress());
        server.setNeedClientAuth(true);
        server.setSoTimeout(10000);
        Thread t = new Thread(() -> {
            try (SSLSocket s = (SSLSocket) server.accept()) {
                s.startHandshake();
                X509Certificate peer = (X509Certificate) s.getSession().getPeerCertificates()[0];
                Writer w = new OutputStreamWriter(s.getOutputStream(), StandardCharsets.UTF_8);
                w.write(uri(peer) + "\n");
                w.flush();
            } catch (Exception e) {
                // The client reports the failure.
            }
        });
        t.start();
        try (Socket plain = new Socket(InetAddress.getLoopbackAddress(), server.getLocalPort())) {
            plain.setSoTimeout(10000);
            SSLSocket s = (SSLSocket) context(cks, cts).getSocketFactory()
                    .createSocket(plain, host, server.getLocalPort(), true);
            SSLParameters p = s.getSSLParameters();
            p.setEndpointIdentificationAlgorithm("HTTPS");
            p.setServerNames(List.of(new SNIHostName(host)));
            s.setSSLParameters(p);
            s.startHandshake();
            X509Certificate peer = (X509Certificate) s.getSession().getPeerCertificates()[0];
            BufferedReader r = new BufferedReader(new InputStreamReader(s.getInputStream(), StandardCharsets.UTF_8));
            String seen = r.readLine();
            return "ok server=" + uri(peer) + " client=" + seen;
        } finally {
            server.close();
            t.join();
        }
    }

    public static void main(String[] args) {
        if (args.length == 0 || args.length % 5 != 0) {
            System.err.println("usage: JsseHandshake (SERVER_KS SERVER_TS CLIENT_KS CLIENT_TS HOST)...");
            System.exit(2);
        }
        for (int i = 0; i < args.length; i += 5) {
            try {
                System.out.println(handshake(args[i], args[i + 1], args[i + 2], args[i + 3], args[i + 4]));
            } catch (Exception e) {
                String m = e.toString().replace('\n', ' ');
                System.out.println("fail " + m);
            }
        }
    }
}
