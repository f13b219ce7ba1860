// edgebot_led: the board's LED as a robot action. "Turn on the light" (voice, CLI, or the model
// deciding to) makes edgebot-serial send  T <id> led {"state":"on"}  and this sketch answers
// R <id> ok LED on . A button on pin 2 answers "yes" when edgebot asks "Shall I ...?" for an
// action declared with confirm = true.
//
// Protocol: docs/serial-protocol.md (T and R: "Actions"); the action is declared in edgebotd's
// configuration (docs/actions.md):
//
//   [[actions]]
//   name = "led"
//   description = "turn the LED on or off"
//   port = "/dev/serial/by-id/usb-Arduino_LLC_Arduino_Uno_1234-if00"
//   parameters = { properties = { state = { enum = ["on", "off"] } } }
//   phrases = { "turn on the light" = { state = "on" }, "turn off the light" = { state = "off" } }
//
// Written against the documentation; syntax-checked with g++ and a stub Arduino.h, not built for a board.

#include <Arduino.h>

#define LED_PIN LED_BUILTIN
#define BUTTON_PIN 2
#define LINK Serial             // the UART edgebot-serial listens on

static char line[129];          // one protocol line: at most 128 bytes + NUL
static uint8_t lineLen = 0;
static bool lineTooLong = false;
static uint16_t lastCallId = 0;  // the last T id run: a resent T is answered again, not run again
static char lastReply[40] = "";
static uint16_t nextId = 1;      // ids of our own Q lines (the "yes" button)

static uint8_t xorOf(const char *s, size_t n) {
  uint8_t x = 0;
  for (size_t i = 0; i < n; i++) x ^= (uint8_t)s[i];
  return x;
}

static void sendLine(const char *body) {          // "body*HH\n"
  char tail[5];
  snprintf(tail, sizeof tail, "*%02X", xorOf(body, strlen(body)));
  LINK.print(body);
  LINK.print(tail);
  LINK.print('\n');
}

// Run one action; write "ok <text>" or "err <text>" into reply (at most 32 bytes).
static void runAction(const char *name, const char *args, char *reply, size_t size) {
  if (strcmp(name, "led") != 0) {
    snprintf(reply, size, "err unknown action");
  } else if (strstr(args, "\"state\":\"on\"")) {    // the host sends compact JSON, keys as declared
    digitalWrite(LED_PIN, HIGH);
    snprintf(reply, size, "ok LED on");
  } else if (strstr(args, "\"state\":\"off\"")) {
    digitalWrite(LED_PIN, LOW);
    snprintf(reply, size, "ok LED off");
  } else {
    snprintf(reply, size, "err bad state");
  }
}

static void handleLine(char *s, uint8_t n) {
  if (n > 0 && s[n - 1] == '\r') s[--n] = '\0';
  if (n < 4 || s[n - 3] != '*') return;
  uint8_t want = (uint8_t)strtoul(s + n - 2, NULL, 16);
  if (xorOf(s, n - 3) != want) return;               // damaged: the host sends T again
  s[n - 3] = '\0';

  if (s[0] == 'T' && s[1] == ' ') {                  // T <id> <action> <args-json>
    char *p = s + 2;
    uint16_t id = (uint16_t)strtoul(p, &p, 10);
    if (*p == ' ') p++;
    char *name = p;
    char *args = strchr(p, ' ');
    if (args) *args++ = '\0'; else args = (char *)"{}";
    if (id != lastCallId) {                          // a new call: run it once
      runAction(name, args, lastReply, sizeof lastReply);
      lastCallId = id;
    }
    char buf[48];
    snprintf(buf, sizeof buf, "R %u %s", id, lastReply);
    sendLine(buf);
  } else if (s[0] == 'A' && s[1] == ' ') {           // A <id> <seq> <text>: the answer to our "yes"
    char *p = s + 2;
    uint16_t id = (uint16_t)strtoul(p, &p, 10);
    uint16_t seq = (uint16_t)strtoul(p, &p, 10);
    char buf[20];
    snprintf(buf, sizeof buf, "K %u %u", id, seq);
    sendLine(buf);                                   // acknowledge every chunk (this sketch shows none)
  }
  // E, ERR, HELLO and P need no reply here.
}

static void readLink() {
  while (LINK.available()) {
    char c = (char)LINK.read();
    if (c == '\n') {
      line[lineLen] = '\0';
      if (!lineTooLong) handleLine(line, lineLen);
      lineLen = 0;
      lineTooLong = false;
    } else if (lineLen < sizeof line - 1) {
      line[lineLen++] = c;
    } else {
      lineTooLong = true;
    }
  }
}

void setup() {
  pinMode(LED_PIN, OUTPUT);
  pinMode(BUTTON_PIN, INPUT_PULLUP);
  LINK.begin(115200);
  LINK.print('\n');                                  // flush any half line on the host side
  sendLine("HELLO 0 edgebot-led-1 rx=64");
}

void loop() {
  static bool wasPressed = false;
  static unsigned long pressedAt = 0;
  bool pressed = digitalRead(BUTTON_PIN) == LOW;
  if (pressed && !wasPressed && millis() - pressedAt > 50) {   // debounced: "yes" to a pending "Shall I ...?"
    char buf[16];
    snprintf(buf, sizeof buf, "Q %u yes", nextId);
    nextId = nextId == 65535 ? 1 : nextId + 1;
    sendLine(buf);
    pressedAt = millis();
  }
  wasPressed = pressed;
  readLink();
}
