// Starts JMeter 2.13 with its two XStream instances allowed to read any
// type. Debian's libxstream-java (1.4.20) refuses every type that is not on
// an allow-list, and JMeter 2.13 predates that, so without this every plan
// fails with ForbiddenClassException: org.apache.jmeter.save.ScriptWrapper.
//
// run-jmeter.sh compiles this with the machine's javac; JMeter's jars must be
// on the class path (not only on NewDriver's own loader) so that the
// SaveService class patched here is the one JMeter uses.

import java.lang.reflect.Field;
import java.lang.reflect.Method;

public final class HeraldJMeterLauncher {
    public static void main(String[] args) throws Exception {
        // SaveService's static initialiser reads bin/saveservice.properties
        // under JMeter's home, which JMeter.main would only set later.
        String home = System.getProperty("jmeter.home", "/usr/share/jmeter");
        Class<?> utils = Class.forName("org.apache.jmeter.util.JMeterUtils");
        utils.getMethod("setJMeterHome", String.class).invoke(null, home);
        utils.getMethod("loadJMeterProperties", String.class)
                .invoke(null, home + "/bin/jmeter.properties");
        Class<?> saveService = Class.forName("org.apache.jmeter.save.SaveService");
        Class<?> typePermission = Class.forName("com.thoughtworks.xstream.security.TypePermission");
        Object any = Class.forName("com.thoughtworks.xstream.security.AnyTypePermission")
                .getField("ANY")
                .get(null);
        for (String name : new String[] {"JMXSAVER", "JTLSAVER"}) {
            Field field = saveService.getDeclaredField(name);
            field.setAccessible(true);
            Object xstream = field.get(null);
            Method addPermission = xstream.getClass().getMethod("addPermission", typePermission);
            addPermission.invoke(xstream, any);
        }
        Class.forName("org.apache.jmeter.NewDriver")
                .getMethod("main", String[].class)
                .invoke(null, (Object) args);
    }
}
