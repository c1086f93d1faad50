// The MC146818 RTC (src/devices/cmos-rtc.ts) over a fake wall clock: the time
// in each of its formats, setting it, the update cycle, register C's flags,
// and the alarm that wakes the machine from S3.
import test from 'ava';
import { CmosRtc, RTC_DATA_PORT, RTC_INDEX_PORT } from '../src/devices/cmos-rtc.js';

/** 2026-12-07 13:45:09.250 UTC, a Monday. */
const T0 = Date.UTC(2026, 11, 7, 13, 45, 9, 250);

function rig(ms = T0) {
  const clock = { ms };
  const rtc = new CmosRtc(() => clock.ms);
  const read = (reg: number) => {
    rtc.pioWrite(RTC_INDEX_PORT, 1, reg);
    return rtc.pioRead(RTC_DATA_PORT, 1);
  };
  const write = (reg: number, v: number) => {
    rtc.pioWrite(RTC_INDEX_PORT, 1, reg);
    rtc.pioWrite(RTC_DATA_PORT, 1, v);
  };
  const time = () => [0, 2, 4, 6, 7, 8, 9, 0x32].map(read);
  return { clock, rtc, read, write, time };
}

test('the host\'s UTC time in BCD and 24-hour form (a BIOS\'s default), with the century at 0x32; register D says the battery is good', (t) => {
  const { time, read } = rig();
  t.deepEqual(time(), [0x09, 0x45, 0x13, 2, 0x07, 0x12, 0x26, 0x20]);
  t.is(read(0x0b), 0x02);
  t.is(read(0x0d), 0x80);
});

test('register B picks binary and 12-hour forms: 13:45 reads as 1 PM', (t) => {
  const { time, write } = rig();
  write(0x0b, 0x04); // binary, 12-hour
  t.deepEqual(time(), [9, 45, 0x81, 2, 7, 12, 26, 20]);
  write(0x0b, 0x00); // BCD, 12-hour
  t.deepEqual(time().slice(0, 3), [0x09, 0x45, 0x81]);
});

test('setting the time with SET held: the clock stands still while held, then runs on from what the guest wrote', (t) => {
  const { clock, time, write, read } = rig();
  write(0x0b, 0x82); // SET, BCD, 24-hour
  write(0x00, 0x30);
  write(0x02, 0x59);
  write(0x04, 0x23);
  write(0x07, 0x31);
  write(0x08, 0x12);
  write(0x09, 0x99);
  write(0x32, 0x19);
  clock.ms += 5000;
  t.deepEqual(time(), [0x30, 0x59, 0x23, 6, 0x31, 0x12, 0x99, 0x19], 'held: 1999-12-31 23:59:30, a Friday');
  t.is(read(0x0a) & 0x80, 0, 'no update in progress while SET holds the clock');
  write(0x0b, 0x02);
  clock.ms += 31_000;
  t.deepEqual(time(), [0x01, 0x00, 0x00, 7, 0x01, 0x01, 0x00, 0x20], 'released: 31 s later it is 2000-01-01, a Saturday');
});

test('a field written without SET moves the clock at once; an impossible one is ignored', (t) => {
  const { time, write } = rig();
  write(0x04, 0x02);
  t.deepEqual(time().slice(0, 3), [0x09, 0x45, 0x02]);
  write(0x08, 0x13); // month 13
  write(0x00, 0x60); // second 60
  t.deepEqual(time().slice(0, 1).concat(time().slice(4, 7)), [0x09, 0x07, 0x12, 0x26]);
});

test('UIP in register A during the last 244 µs of each second only; A\'s other bits are the guest\'s; bit 7 of the index masks NMI, not the register', (t) => {
  const { clock, read, rtc, write } = rig(Date.UTC(2026, 0, 1, 0, 0, 0, 999));
  t.is(read(0x0a), 0x26);
  clock.ms += 0.8;
  t.is(read(0x0a), 0xa6);
  clock.ms += 0.3;
  t.is(read(0x0a), 0x26, 'the next second has begun');
  write(0x0a, 0xff);
  t.is(read(0x0a) & 0x7f, 0x7f);
  rtc.pioWrite(RTC_INDEX_PORT, 1, 0x80 | 0x09);
  t.is(rtc.pioRead(RTC_INDEX_PORT, 1), 0x09);
  t.is(rtc.pioRead(RTC_DATA_PORT, 1), 0x26);
});

test('register C: UF once a second has ended since it was read, AF when the alarm matched in those seconds, IRQF only for an enabled interrupt; a read clears it', (t) => {
  const { clock, read, write } = rig();
  t.is(read(0x0c), 0);
  clock.ms += 1000;
  t.is(read(0x0c), 0x10, 'UF, no interrupt enabled');
  t.is(read(0x0c), 0, 'cleared by the read');
  write(0x01, 0x12); // alarm at hh:mm:12, BCD
  write(0x03, 0xc0);
  write(0x05, 0xc0);
  clock.ms += 1000; // 13:45:10
  t.is(read(0x0c), 0x10, 'the alarm second has not come');
  clock.ms += 2000; // 13:45:12
  t.is(read(0x0c), 0x30, 'AF and UF');
  write(0x0b, 0x22); // AIE
  clock.ms += 60_000;
  t.is(read(0x0c), 0xb0, 'IRQF with AIE');
  write(0x0b, 0x12); // UIE only
  clock.ms += 1000;
  t.is(read(0x0c), 0x90, 'IRQF with UIE for UF');
});

test('the alarm: milliseconds to the next matching second, don\'t-care bytes match any value, and none while AIE is clear', (t) => {
  const { read, write, rtc } = rig();
  write(0x01, 0xc0);
  write(0x03, 0xc0);
  write(0x05, 0xc0);
  t.is(rtc.msToAlarm(), null, 'AIE clear');
  write(0x0b, read(0x0b) | 0x20);
  t.is(rtc.msToAlarm(), 750, 'every second: the next one, 750 ms away (kvm-unit-tests\' s3)');
  write(0x01, 0x00);
  write(0x03, 0x46);
  t.is(rtc.msToAlarm(), 50_750, '13:46:00');
  write(0x05, 0x13);
  write(0x03, 0x45);
  write(0x01, 0x09);
  t.is(rtc.msToAlarm(), 86_399_750, '13:45:09 has just passed: tomorrow');
  write(0x05, 0x3f); // an hour no clock reaches
  t.is(rtc.msToAlarm(), null);
});
