// edgebot over MQTT from an ESP32 (Arduino core + the PubSubClient library).
//
// A button on BUTTON_PIN asks a question; the answer arrives on edgebot/answer/<id> and is printed on
// Serial when its final message comes. The board also runs the declared action "led": edgebot
// publishes {"state":"on"} on edgebot/action/led and this sketch answers "ok LED on" on
// edgebot/action/led/result. Declare it in /etc/edgebot/edgebot.toml with port = "mqtt"
// (docs/integrations.md#mqtt).
//
// Set WIFI_SSID, WIFI_PASSWORD and BROKER below. Answers are JSON messages; PubSubClient's default
// 256-byte buffer is too small for a whole answer, so setBufferSize(2048) is called.

#include <WiFi.h>
#include <PubSubClient.h>
#include <string.h>

const char *WIFI_SSID = "classroom";
const char *WIFI_PASSWORD = "secret";
const char *BROKER = "192.168.1.10";  // the board running mosquitto (or any broker)
const int BROKER_PORT = 1883;
const char *PREFIX = "edgebot";
const int BUTTON_PIN = 0;              // the BOOT button on most ESP32 dev boards
const int LED_PIN = 2;

WiFiClient net;
PubSubClient mqtt(net);
unsigned int questionNo = 0;
char answerTopic[64];
char topicBuf[96];

// Copies the JSON string value of "key" in json into out (at most outSize-1 bytes, \" \\ \n unescaped).
// Returns false when the key is absent. Enough for edgebot's flat answer messages.
bool jsonString(const char *json, const char *key, char *out, size_t outSize) {
  char pattern[24];
  snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
  const char *p = strstr(json, pattern);
  if (p == NULL) return false;
  p += strlen(pattern);
  size_t n = 0;
  while (*p && *p != '"' && n + 1 < outSize) {
    if (*p == '\\' && p[1]) {
      p++;
      out[n++] = (*p == 'n') ? '\n' : *p;
    } else {
      out[n++] = *p;
    }
    p++;
  }
  out[n] = '\0';
  return true;
}

void onMessage(char *topic, byte *payload, unsigned int length) {
  static char body[2048];
  if (length >= sizeof body) length = sizeof body - 1;
  memcpy(body, payload, length);
  body[length] = '\0';
  snprintf(topicBuf, sizeof topicBuf, "%s/action/led", PREFIX);
  if (strcmp(topic, topicBuf) == 0) {         // a declared action, arguments already checked by edgebot
    bool on = strstr(body, "\"on\"") != NULL;
    digitalWrite(LED_PIN, on ? HIGH : LOW);
    snprintf(topicBuf, sizeof topicBuf, "%s/action/led/result", PREFIX);
    mqtt.publish(topicBuf, on ? "ok LED on" : "ok LED off");
    return;
  }
  if (strcmp(topic, answerTopic) == 0 && strstr(body, "\"type\":\"end\"") != NULL) {
    static char text[1024];
    if (jsonString(body, "text", text, sizeof text)) {
      Serial.print("edgebot: ");
      Serial.println(text);
    }
  }
}

void connectMqtt() {
  char status[64];
  snprintf(status, sizeof status, "%s/status", PREFIX);
  while (!mqtt.connected()) {
    if (mqtt.connect("esp32-robot")) {
      snprintf(topicBuf, sizeof topicBuf, "%s/answer/+", PREFIX);
      mqtt.subscribe(topicBuf, 1);
      snprintf(topicBuf, sizeof topicBuf, "%s/action/led", PREFIX);
      mqtt.subscribe(topicBuf, 1);
      mqtt.subscribe(status, 1);
    } else {
      delay(1000);
    }
  }
}

void setup() {
  Serial.begin(115200);
  pinMode(BUTTON_PIN, INPUT_PULLUP);
  pinMode(LED_PIN, OUTPUT);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  while (WiFi.status() != WL_CONNECTED) delay(200);
  mqtt.setServer(BROKER, BROKER_PORT);
  mqtt.setBufferSize(2048);
  mqtt.setCallback(onMessage);
}

void loop() {
  connectMqtt();
  mqtt.loop();
  if (digitalRead(BUTTON_PIN) == LOW) {
    char ask[160];
    questionNo++;
    snprintf(answerTopic, sizeof answerTopic, "%s/answer/esp32-%u", PREFIX, questionNo);
    snprintf(ask, sizeof ask, "{\"id\":\"esp32-%u\",\"text\":\"Tell me a fun fact about the moon.\"}", questionNo);
    snprintf(topicBuf, sizeof topicBuf, "%s/ask", PREFIX);
    mqtt.publish(topicBuf, ask);
    while (digitalRead(BUTTON_PIN) == LOW) mqtt.loop();  // wait for the release
  }
}
